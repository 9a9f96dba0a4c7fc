package natskvlease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natskvlease/natskvlease/internal/natstest"
)

// retryNetErr is a net.Error whose Timeout() is chosen by the test.
type retryNetErr struct{ timeout bool }

func (e retryNetErr) Error() string   { return fmt.Sprintf("net error (timeout=%v)", e.timeout) }
func (e retryNetErr) Timeout() bool   { return e.timeout }
func (e retryNetErr) Temporary() bool { return e.timeout }

var _ net.Error = retryNetErr{}

// fastRetry keeps the waits between attempts tiny so that counting
// attempts takes milliseconds.
func fastRetry(maxRetries uint) RetryConfig {
	return RetryConfig{
		MaxRetries:      maxRetries,
		MaxElapsedTime:  time.Minute,
		InitialInterval: time.Millisecond,
		MaxInterval:     2 * time.Millisecond,
	}
}

type errCase struct {
	name string
	err  error
}

// transientErrors are the errors the contract says Retry retries.
func transientErrors() []errCase {
	return []errCase{
		{"context.DeadlineExceeded", context.DeadlineExceeded},
		{"nats.ErrTimeout", nats.ErrTimeout},
		{"nats.ErrNoResponders", nats.ErrNoResponders},
		{"jetstream.ErrNoStreamResponse", jetstream.ErrNoStreamResponse},
		{"nats.ErrDisconnected", nats.ErrDisconnected},
		{"nats.ErrConnectionReconnecting", nats.ErrConnectionReconnecting},
		{"nats.ErrNoServers", nats.ErrNoServers},
		{"syscall.ECONNREFUSED", syscall.ECONNREFUSED},
		{"syscall.ECONNRESET", syscall.ECONNRESET},
		{"dial OpError ECONNREFUSED", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}},
		{"net.Error with Timeout", retryNetErr{timeout: true}},
		{"os.ErrDeadlineExceeded", os.ErrDeadlineExceeded},
		{"APIError 503 10008", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}},
		{"APIError 503 no err_code", &jetstream.APIError{Code: 503}},
	}
}

// permanentErrors must be returned at once, unchanged.
func permanentErrors() []errCase {
	return []errCase{
		{"jetstream.ErrKeyExists", jetstream.ErrKeyExists},
		{"jetstream.ErrKeyRevisionMismatch", jetstream.ErrKeyRevisionMismatch},
		{"jetstream.ErrKeyNotFound", jetstream.ErrKeyNotFound},
		{"APIError 400 10071", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence: 7"}},
		{"APIError 400 10164", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant}},
		{"APIError 404 10059", &jetstream.APIError{Code: 404, ErrorCode: jetstream.JSErrCodeStreamNotFound}},
		{"APIError 500", &jetstream.APIError{Code: 500, ErrorCode: 10052}},
		{"APIError 503 10076 not enabled", &jetstream.APIError{Code: 503, ErrorCode: jetstream.JSErrCodeJetStreamNotEnabled}},
		{"APIError 503 10039 not enabled for account", &jetstream.APIError{Code: 503, ErrorCode: jetstream.JSErrCodeJetStreamNotEnabledForAccount}},
		{"jetstream.ErrJetStreamNotEnabled", jetstream.ErrJetStreamNotEnabled},
		{"jetstream.ErrJetStreamNotEnabledForAccount", jetstream.ErrJetStreamNotEnabledForAccount},
		{"context.Canceled", context.Canceled},
		{"nats.ErrConnectionClosed", nats.ErrConnectionClosed},
		{"nats.ErrBadSubject", nats.ErrBadSubject},
		{"ErrInvalidConfig", ErrInvalidConfig},
		{"net.Error without Timeout", retryNetErr{timeout: false}},
		{"syscall.EPERM", syscall.EPERM},
		{"plain error", errors.New("boom")},
		{"plain error mentioning timeout", errors.New("nats: timeout")},
	}
}

func TestRetryTransientErrorsAreRetriedUpToMaxRetries(t *testing.T) {
	for _, tc := range transientErrors() {
		t.Run(tc.name, func(t *testing.T) {
			var calls int
			_, err := RetryWithConfig(context.Background(), func() (int, error) {
				calls++
				return 0, fmt.Errorf("attempt %d: %w", calls, tc.err)
			}, fastRetry(3))
			if calls != 3 {
				t.Fatalf("fn called %d times, want 3", calls)
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want it to match %v", err, tc.err)
			}
			if !strings.HasPrefix(err.Error(), "attempt 3:") {
				t.Fatalf("err = %q, want the last attempt's error", err)
			}
		})
	}
}

func TestRetryPermanentErrorsReturnedAtOnceUnchanged(t *testing.T) {
	for _, tc := range permanentErrors() {
		t.Run(tc.name, func(t *testing.T) {
			var calls int
			v, err := RetryWithConfig(context.Background(), func() (int, error) {
				calls++
				return 7, tc.err
			}, fastRetry(5))
			if calls != 1 {
				t.Fatalf("fn called %d times, want 1", calls)
			}
			if err != tc.err {
				t.Fatalf("err = %#v, want the very same error %#v", err, tc.err)
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("errors.Is(%v, %v) = false", err, tc.err)
			}
			if v != 0 {
				t.Fatalf("value = %d on error, want the zero value", v)
			}
		})
	}
	t.Run("wrapped permanent error", func(t *testing.T) {
		want := fmt.Errorf("op: %w", jetstream.ErrKeyExists)
		var calls int
		_, err := Retry(context.Background(), func() (struct{}, error) {
			calls++
			return struct{}{}, want
		})
		if calls != 1 || err != want {
			t.Fatalf("calls=%d err=%v, want 1 call and the same error", calls, err)
		}
	})
}

func TestRetryMaxRetriesIsTotalAttempts(t *testing.T) {
	for _, n := range []uint{1, 2, 3, 5, 8} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			var calls uint
			_, err := RetryWithConfig(context.Background(), func() (string, error) {
				calls++
				return "", nats.ErrTimeout
			}, fastRetry(n))
			if calls != n {
				t.Fatalf("MaxRetries=%d: fn called %d times", n, calls)
			}
			if !errors.Is(err, nats.ErrTimeout) {
				t.Fatalf("err = %v, want nats.ErrTimeout", err)
			}
		})
	}
}

func TestRetryZeroConfigUsesDefaults(t *testing.T) {
	if got, want := (RetryConfig{}).withDefaults(), DefaultRetryConfig(); got != want {
		t.Fatalf("zero config with defaults = %+v, want %+v", got, want)
	}
	d := DefaultRetryConfig()
	if d.MaxRetries != DefaultMaxRetries || d.MaxElapsedTime != DefaultMaxElapsedTime ||
		d.InitialInterval <= 0 || d.MaxInterval < d.InitialInterval {
		t.Fatalf("DefaultRetryConfig() = %+v", d)
	}
	// Zero and negative fields take defaults; set ones are kept.
	got := RetryConfig{MaxRetries: 2, MaxElapsedTime: -1, InitialInterval: -time.Second, MaxInterval: 3 * time.Second}.withDefaults()
	want := RetryConfig{MaxRetries: 2, MaxElapsedTime: d.MaxElapsedTime, InitialInterval: d.InitialInterval, MaxInterval: 3 * time.Second}
	if got != want {
		t.Fatalf("partial config with defaults = %+v, want %+v", got, want)
	}

	for name, run := range map[string]func(fn func() (int, error)) error{
		"RetryWithConfig(zero)": func(fn func() (int, error)) error {
			_, err := RetryWithConfig(context.Background(), fn, RetryConfig{})
			return err
		},
		"Retry": func(fn func() (int, error)) error {
			_, err := Retry(context.Background(), fn)
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			var calls int
			start := time.Now()
			err := run(func() (int, error) {
				calls++
				return 0, nats.ErrNoResponders
			})
			if calls != DefaultMaxRetries {
				t.Fatalf("fn called %d times, want DefaultMaxRetries=%d", calls, DefaultMaxRetries)
			}
			if !errors.Is(err, nats.ErrNoResponders) {
				t.Fatalf("err = %v", err)
			}
			if el := time.Since(start); el > DefaultMaxElapsedTime+time.Second {
				t.Fatalf("took %v, beyond DefaultMaxElapsedTime", el)
			}
		})
	}
}

func TestRetrySucceedsAfterTransientFailures(t *testing.T) {
	var calls int
	v, err := RetryWithConfig(context.Background(), func() (int, error) {
		calls++
		if calls < 3 {
			return -1, jetstream.ErrNoStreamResponse
		}
		return 42, nil
	}, fastRetry(5))
	if err != nil || v != 42 || calls != 3 {
		t.Fatalf("got (%d, %v) after %d calls, want (42, nil) after 3", v, err, calls)
	}

	calls = 0
	v, err = Retry(context.Background(), func() (int, error) { calls++; return 1, nil })
	if err != nil || v != 1 || calls != 1 {
		t.Fatalf("immediate success: got (%d, %v) after %d calls", v, err, calls)
	}
}

func TestRetryMaxElapsedTimeStopsRetrying(t *testing.T) {
	var calls atomic.Int64
	// The context only bounds the test if MaxElapsedTime is ignored.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := RetryWithConfig(ctx, func() (int, error) {
		calls.Add(1)
		return 0, nats.ErrTimeout
	}, RetryConfig{
		MaxRetries:      1_000_000,
		MaxElapsedTime:  100 * time.Millisecond,
		InitialInterval: 5 * time.Millisecond,
		MaxInterval:     10 * time.Millisecond,
	})
	elapsed := time.Since(start)
	if elapsed > 2*time.Second {
		t.Fatalf("returned after %v, want well within 2s of a 100ms MaxElapsedTime", elapsed)
	}
	if n := calls.Load(); n < 2 || n >= 1_000_000 {
		t.Fatalf("fn called %d times, want more than 1 and fewer than MaxRetries", n)
	}
	if !errors.Is(err, nats.ErrTimeout) || ctx.Err() != nil {
		t.Fatalf("err = %v (ctx %v), want the last error (nats.ErrTimeout) before the context ended", err, ctx.Err())
	}
}

func TestRetryContextCanceledInsideFn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls int
	_, err := RetryWithConfig(ctx, func() (int, error) {
		calls++
		if calls == 2 {
			cancel()
		}
		return 0, nats.ErrTimeout
	}, RetryConfig{MaxRetries: 100, MaxElapsedTime: time.Minute, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want it to match context.Canceled", err)
	}
	if !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("err = %v, want ctx.Err() joined with the last error", err)
	}
	if calls != 2 {
		t.Fatalf("fn called %d times after cancel at call 2, want 2", calls)
	}
}

func TestRetryContextCanceledDuringWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls int
	start := time.Now()
	_, err := RetryWithConfig(ctx, func() (int, error) {
		calls++
		// Cancel from another goroutine once Retry is waiting out a long
		// interval.
		go func() { cancel() }()
		return 0, nats.ErrNoResponders
	}, RetryConfig{MaxRetries: 10, MaxElapsedTime: time.Minute, InitialInterval: 20 * time.Second, MaxInterval: 20 * time.Second})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("err = %v, want context.Canceled joined with nats.ErrNoResponders", err)
	}
	if calls != 1 {
		t.Fatalf("fn called %d times, want 1", calls)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("returned after %v: the wait did not end with the context", el)
	}
}

func TestRetryAlreadyCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var calls int
	_, err := Retry(ctx, func() (int, error) { calls++; return 0, nats.ErrTimeout })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if calls > 1 {
		t.Fatalf("fn called %d times on a canceled context", calls)
	}
}

func TestRetryNeverSleepsPastDeadline(t *testing.T) {
	t.Run("50ms deadline, 1s interval", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		deadline, _ := ctx.Deadline()
		start := time.Now()
		var calls int
		_, err := RetryWithConfig(ctx, func() (int, error) {
			calls++
			return 0, nats.ErrTimeout
		}, RetryConfig{MaxRetries: 10, MaxElapsedTime: time.Minute, InitialInterval: time.Second, MaxInterval: time.Second})
		returned := time.Now()
		if returned.After(deadline.Add(time.Second)) {
			t.Fatalf("returned %v after the deadline (%v after start): slept past it", returned.Sub(deadline), returned.Sub(start))
		}
		if calls != 1 {
			t.Fatalf("fn called %d times, want 1", calls)
		}
		if !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("err = %v, want the last error", err)
		}
	})
	t.Run("wait longer than time left gives up at once", func(t *testing.T) {
		// A wait (>= 5s with jitter) that cannot end before the 2s deadline
		// is not started: Retry returns the last error before the deadline,
		// not the context's error at it.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		deadline, _ := ctx.Deadline()
		_, err := RetryWithConfig(ctx, func() (int, error) {
			return 0, nats.ErrNoResponders
		}, RetryConfig{MaxRetries: 10, MaxElapsedTime: time.Minute, InitialInterval: 10 * time.Second, MaxInterval: 10 * time.Second})
		if !time.Now().Before(deadline) {
			t.Fatalf("returned at or after the deadline; want at once")
		}
		if !errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want only the last error", err)
		}
	})
	t.Run("short intervals retry until near the deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		deadline, _ := ctx.Deadline()
		var calls int
		_, err := RetryWithConfig(ctx, func() (int, error) {
			calls++
			return 0, nats.ErrTimeout
		}, RetryConfig{MaxRetries: 1000, MaxElapsedTime: time.Minute, InitialInterval: 10 * time.Millisecond, MaxInterval: 20 * time.Millisecond})
		if late := time.Since(deadline); late > time.Second {
			t.Fatalf("returned %v after the deadline", late)
		}
		if calls < 2 {
			t.Fatalf("fn called %d times, want retries before the deadline", calls)
		}
		if !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("err = %v, want the last error", err)
		}
	})
}

// TestRetryEndedContextKeepsLastError calls Retry many times with
// deadlines that end during a backoff wait, at its end, or just after:
// whenever the context's error is returned it comes joined with the last
// attempt's error, never bare.
func TestRetryEndedContextKeepsLastError(t *testing.T) {
	cfg := RetryConfig{MaxRetries: 1000, MaxElapsedTime: time.Minute, InitialInterval: time.Millisecond, MaxInterval: 3 * time.Millisecond}
	for i := range 400 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i%15)*time.Millisecond)
		calls := 0
		_, err := RetryWithConfig(ctx, func() (int, error) {
			calls++
			return 0, nats.ErrTimeout
		}, cfg)
		cancel()
		if calls > 0 && !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("call %d: err = %v after %d attempts; want the last error (joined with the context's)", i, err, calls)
		}
	}
}

func TestIsTransient(t *testing.T) {
	type tc struct {
		name string
		err  error
		want bool
	}
	var cases []tc
	for _, c := range transientErrors() {
		cases = append(cases,
			tc{c.name, c.err, true},
			tc{"wrapped " + c.name, fmt.Errorf("ctx: %w", c.err), true},
			tc{"double wrapped " + c.name, fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", c.err)), true},
			tc{"joined " + c.name, errors.Join(errors.New("other"), c.err), true},
		)
	}
	for _, c := range permanentErrors() {
		cases = append(cases,
			tc{c.name, c.err, false},
			tc{"wrapped " + c.name, fmt.Errorf("ctx: %w", c.err), false},
		)
	}
	cases = append(cases,
		tc{"nil", nil, false},
		tc{"formatted with %v loses the chain", fmt.Errorf("ctx: %v", nats.ErrTimeout), false},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := IsTransient(c.err); got != c.want {
				t.Fatalf("IsTransient(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

// TestIsTransientRealErrors classifies errors produced by a real server
// and client rather than sentinel values.
func TestIsTransientRealErrors(t *testing.T) {
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	ctx := natstest.Context(t)

	_, err := nc.Request("nobody.listens.here", nil, 5*time.Second)
	if !errors.Is(err, nats.ErrNoResponders) || !IsTransient(err) {
		t.Fatalf("request without responders: err = %v, IsTransient = %v; want transient no-responders", err, IsTransient(err))
	}

	sub, err := nc.SubscribeSync("silent.service")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	_, err = nc.Request("silent.service", nil, 20*time.Millisecond)
	if !IsTransient(err) {
		t.Fatalf("request timeout: err = %v, want transient", err)
	}

	expired, cancel := context.WithTimeout(ctx, time.Nanosecond)
	<-expired.Done()
	_, err = js.AccountInfo(expired)
	cancel()
	if err == nil || !IsTransient(err) {
		t.Fatalf("AccountInfo on an expired context: err = %v, want transient", err)
	}

	_, kv := testBucket(t, srv, 10*time.Second)
	rev, err := kv.Create(ctx, "k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = kv.Create(ctx, "k", []byte("v2"))
	if err == nil || IsTransient(err) || !isRevisionMismatch(err) {
		t.Fatalf("Create on an existing key: err = %v, IsTransient = %v, isRevisionMismatch = %v", err, IsTransient(err), isRevisionMismatch(err))
	}
	_, err = kv.Update(ctx, "k", []byte("v3"), rev+100)
	if err == nil || IsTransient(err) || !isRevisionMismatch(err) {
		t.Fatalf("Update on a wrong revision: err = %v, IsTransient = %v, isRevisionMismatch = %v", err, IsTransient(err), isRevisionMismatch(err))
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Fatalf("Update conflict on R1 = %#v, want API error 10071", err)
	}

	// A dial to a port nobody listens on is refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Log("port was reused; skipping the refused-dial check")
	} else if !IsTransient(err) {
		t.Fatalf("refused dial: err = %v, want transient", err)
	}
}

func TestIsRevisionMismatch(t *testing.T) {
	conflict := &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence: 3"}
	conflictR3 := &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant, Description: "wrong last sequence"}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"ErrKeyRevisionMismatch", jetstream.ErrKeyRevisionMismatch, true},
		{"ErrKeyExists", jetstream.ErrKeyExists, true},
		{"APIError 10071", conflict, true},
		{"APIError 10164", conflictR3, true},
		{"wrapped ErrKeyRevisionMismatch", fmt.Errorf("update k: %w", jetstream.ErrKeyRevisionMismatch), true},
		{"wrapped ErrKeyExists", fmt.Errorf("create k: %w", jetstream.ErrKeyExists), true},
		{"wrapped APIError 10071", fmt.Errorf("write: %w", conflict), true},
		{"double wrapped APIError 10164", fmt.Errorf("a: %w", fmt.Errorf("b: %w", conflictR3)), true},
		{"nats.go style 10164 mapping", fmt.Errorf("%w: %w", conflictR3, jetstream.ErrKeyRevisionMismatch), true},
		{"joined", errors.Join(nats.ErrTimeout, conflict), true},
		{"APIError 10037 not found", &jetstream.APIError{Code: 404, ErrorCode: jetstream.JSErrCodeMessageNotFound}, false},
		{"APIError 503", &jetstream.APIError{Code: 503, ErrorCode: 10008}, false},
		{"ErrKeyNotFound", jetstream.ErrKeyNotFound, false},
		{"ErrKeyDeleted", jetstream.ErrKeyDeleted, false},
		{"nats.ErrTimeout", nats.ErrTimeout, false},
		{"plain error with the words", errors.New("wrong last sequence: key exists"), false},
		{"formatted with %v", fmt.Errorf("x: %v", conflict), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := isRevisionMismatch(c.err); got != c.want {
				t.Fatalf("isRevisionMismatch(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

// FuzzIsTransient feeds arbitrary API error codes and messages to
// IsTransient and isRevisionMismatch: they must not panic, and the
// classification depends only on the codes, never on the text.
func FuzzIsTransient(f *testing.F) {
	f.Add(503, uint16(10008), "JetStream system temporarily unavailable", "publish")
	f.Add(503, uint16(0), "", "")
	f.Add(503, uint16(jetstream.JSErrCodeJetStreamNotEnabled), "jetstream not enabled", "info")
	f.Add(503, uint16(jetstream.JSErrCodeJetStreamNotEnabledForAccount), "jetstream not enabled for account", "info")
	f.Add(400, uint16(jetstream.JSErrCodeStreamWrongLastSequence), "wrong last sequence: 1", "update")
	f.Add(400, uint16(jetstream.JSErrCodeStreamWrongLastSequenceConstant), "wrong last sequence", "")
	f.Add(404, uint16(jetstream.JSErrCodeStreamNotFound), "stream not found", "kv")
	f.Add(408, uint16(0), "nats: timeout", "timeout")
	f.Add(500, uint16(10052), "stream name is too long", "create")
	f.Add(0, uint16(0), "context deadline exceeded", "no responders available for request")
	f.Add(-1, uint16(65535), "\x00\xff", "%w %v %s")
	f.Fuzz(func(t *testing.T, code int, errCode uint16, desc, wrap string) {
		apiErr := &jetstream.APIError{Code: code, ErrorCode: jetstream.ErrorCode(errCode), Description: desc}
		ec := jetstream.ErrorCode(errCode)
		wantTransient := code == 503 &&
			ec != jetstream.JSErrCodeJetStreamNotEnabled &&
			ec != jetstream.JSErrCodeJetStreamNotEnabledForAccount
		if code >= 400 && code < 500 && IsTransient(apiErr) {
			t.Fatalf("4xx API error %#v classified transient", apiErr)
		}
		wantMismatch := ec == jetstream.JSErrCodeStreamWrongLastSequence ||
			ec == jetstream.JSErrCodeStreamWrongLastSequenceConstant

		for _, err := range []error{
			apiErr,
			fmt.Errorf("%s: %w", wrap, apiErr),
			errors.Join(errors.New(wrap), apiErr),
		} {
			if got := IsTransient(err); got != wantTransient {
				t.Fatalf("IsTransient(%#v) = %v, want %v (code %d, err_code %d)", err, got, wantTransient, code, errCode)
			}
			if got := isRevisionMismatch(err); got != wantMismatch {
				t.Fatalf("isRevisionMismatch(%#v) = %v, want %v", err, got, wantMismatch)
			}
		}
		// Text alone never makes an error transient or a conflict.
		for _, s := range []string{desc, wrap, apiErr.Error()} {
			if IsTransient(errors.New(s)) || isRevisionMismatch(errors.New(s)) {
				t.Fatalf("plain error %q classified by its text", s)
			}
		}
		// A transient cause stays transient whatever API error it is joined with.
		if !IsTransient(errors.Join(apiErr, nats.ErrTimeout)) {
			t.Fatalf("join of %v and nats.ErrTimeout not transient", apiErr)
		}
	})
}

func TestIsFinal(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"closed connection", nats.ErrConnectionClosed, true},
		{"wrapped closed connection", fmt.Errorf("acquire: %w", nats.ErrConnectionClosed), true},
		{"invalid config", configError("LeaseConfig.Key", "is empty"), true},
		{"TTL not supported", fmt.Errorf("%w: too long", ErrTTLNotSupported), true},
		{"bucket mismatch", fmt.Errorf("%w: MaxAge", ErrBucketMismatch), true},
		{"old server", fmt.Errorf("%w: 2.10.0", ErrNatsVersionNotSupported), true},
		{"JetStream off", jetstream.ErrJetStreamNotEnabled, true},
		{"JetStream off for the account", jetstream.ErrJetStreamNotEnabledForAccount, true},
		{"timeout", nats.ErrTimeout, false},
		{"no responders", nats.ErrNoResponders, false},
		{"disconnected", nats.ErrDisconnected, false},
		{"revision mismatch", jetstream.ErrKeyRevisionMismatch, false},
		{"context ended", context.Canceled, false},
	}
	for _, tc := range cases {
		if got := IsFinal(tc.err); got != tc.want {
			t.Errorf("IsFinal(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
