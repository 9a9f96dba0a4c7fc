package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// events reports what lock and elect do on stderr: one line per event,
// as text ("natslease: locked k (token 7)") or, with --json, as one JSON
// object per line:
//
//	{"time":"2026-01-02T15:04:05.123Z","event":"acquired","key":"k","token":7}
//
// Every object has "time" (RFC 3339, UTC) and "event"; the other fields
// depend on the event (see the --help of lock and elect).
type events struct {
	mu      sync.Mutex
	w       io.Writer
	json    bool
	verbose bool // text mode: report routine events too
}

// routine reports an event that text mode shows only with -v.
func (e *events) routine(event, text string, fields ...any) {
	e.emit(true, event, text, fields)
}

// report reports an event that is always shown.
func (e *events) report(event, text string, fields ...any) {
	e.emit(false, event, text, fields)
}

// failed reports an error: event "error" with field "error".
func (e *events) failed(err error) int {
	msg := oneLine(err)
	e.emit(false, "error", msg, []any{"error", msg})
	return exitError
}

func (e *events) emit(routine bool, event, text string, fields []any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.json {
		if !routine || e.verbose {
			fmt.Fprintf(e.w, "natslease: %s\n", text)
		}
		return
	}
	var b strings.Builder
	b.WriteString(`{"time":`)
	writeJSON(&b, time.Now().UTC().Format(time.RFC3339Nano))
	b.WriteString(`,"event":`)
	writeJSON(&b, event)
	for i := 0; i+1 < len(fields); i += 2 {
		b.WriteByte(',')
		writeJSON(&b, fields[i])
		b.WriteByte(':')
		writeJSON(&b, fields[i+1])
	}
	b.WriteString("}\n")
	_, _ = io.WriteString(e.w, b.String())
}

func writeJSON(b *strings.Builder, v any) {
	if d, ok := v.(time.Duration); ok {
		v = d.Seconds()
	}
	j, err := json.Marshal(v)
	if err != nil {
		j, _ = json.Marshal(fmt.Sprint(v))
	}
	b.Write(j)
}
