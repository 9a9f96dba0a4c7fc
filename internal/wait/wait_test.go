package wait

import (
	"context"
	"testing"
	"time"
)

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep with no deadline = false")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	start := time.Now()
	if Sleep(ctx, 2*time.Hour) {
		t.Fatal("Sleep past the deadline = true")
	}
	if time.Since(start) > time.Second {
		t.Fatal("Sleep past the deadline did not return at once")
	}
	ended, end := context.WithCancel(context.Background())
	end()
	if Sleep(ended, time.Hour) {
		t.Fatal("Sleep on an ended context = true")
	}
}
