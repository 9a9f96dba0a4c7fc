package natskvlease

import (
	"log/slog"
	"sync"
)

// dispatcher runs callbacks one at a time, in the order posted, on a
// goroutine that exists only while there are callbacks to run.
type dispatcher struct {
	logger  *slog.Logger
	mu      sync.Mutex
	queue   []func()
	running bool
}

func (d *dispatcher) post(f func()) {
	if f == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queue = append(d.queue, f)
	if !d.running {
		d.running = true
		go d.run()
	}
}

func (d *dispatcher) run() {
	for {
		d.mu.Lock()
		if len(d.queue) == 0 {
			d.running = false
			d.mu.Unlock()
			return
		}
		f := d.queue[0]
		d.queue = d.queue[1:]
		d.mu.Unlock()
		d.call(f)
	}
}

func (d *dispatcher) call(f func()) {
	defer func() {
		if r := recover(); r != nil {
			d.logger.Error("natskvlease: callback panicked", "panic", r)
		}
	}()
	f()
}
