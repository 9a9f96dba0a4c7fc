package natskvlease

import (
	"errors"
	"time"
)

// safetyDeadline is when a write sent at sentAt stops counting: the TTL
// less a margin of a tenth for clock-rate drift and scheduling.
func (l *Lease) safetyDeadline(sentAt time.Time) time.Time {
	return sentAt.Add(l.ttl - l.ttl/10)
}

// holding returns the current holding, ending it first if its deadline
// has passed.
func (l *Lease) holding() (gen, rev uint64, deadline time.Time, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held && !time.Now().Before(l.deadline) {
		l.endLocked(false, nil)
	}
	return l.gen, l.rev, l.deadline, l.held
}

func (l *Lease) becomeHolder(rev uint64, sentAt time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	l.held, l.token, l.rev = true, rev, rev
	l.deadline = l.safetyDeadline(sentAt)
	l.done = make(chan struct{})
	l.seenOK = false
	l.armWatchdog()
	l.logger.Debug("natskvlease: acquired", "token", rev)
	l.callbacks.post(l.cfg.Callbacks.OnAcquired)
}

func (l *Lease) extend(gen, rev uint64, sentAt time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held || gen != l.gen {
		return
	}
	l.rev = rev
	if d := l.safetyDeadline(sentAt); d.After(l.deadline) {
		l.deadline = d
	}
	l.armWatchdog()
	l.callbacks.post(l.cfg.Callbacks.OnRenewed)
}

func (l *Lease) lose(gen uint64, cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held && gen == l.gen {
		l.endLocked(false, cause)
	}
}

// endForRelease ends the holding as released and returns the revision
// to delete (0: nothing of ours may be on the server).
func (l *Lease) endForRelease() (rev uint64, wasHeld bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held && !time.Now().Before(l.deadline) {
		l.endLocked(false, nil)
	}
	wasHeld = l.held
	if wasHeld {
		l.endLocked(true, nil)
	}
	rev, l.rev = l.rev, 0
	return rev, wasHeld
}

// endLocked ends the current holding; the one place where a holding ends,
// so OnLost or OnReleased is posted exactly once for it.
func (l *Lease) endLocked(released bool, cause error) {
	l.held = false
	l.token = 0
	close(l.done)
	if l.watchdog != nil {
		l.watchdog.Stop()
	}
	if released {
		l.logger.Debug("natskvlease: released")
		l.callbacks.post(l.cfg.Callbacks.OnReleased)
		return
	}
	if cause != nil {
		l.logger.Warn("natskvlease: lease lost", "error", cause)
	} else {
		l.logger.Info("natskvlease: lease lost")
	}
	if l.seenOK && l.seen.rev > l.rev {
		l.rev = 0 // taken or deleted: nothing of ours left to delete
	}
	l.callbacks.post(l.cfg.Callbacks.OnLost)
}

// armWatchdog makes the holding end at its deadline even while a renewal
// is blocked in a request, so OnLost and Done never come late.
func (l *Lease) armWatchdog() {
	d := time.Until(l.deadline)
	if l.watchdog == nil {
		l.watchdog = time.AfterFunc(d, l.expire)
		return
	}
	l.watchdog.Reset(d)
}

func (l *Lease) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return
	}
	if d := time.Until(l.deadline); d > 0 {
		l.watchdog.Reset(d) // extended since this firing was scheduled
		return
	}
	l.endLocked(false, errors.New("safety deadline passed"))
}

// observe records the key's state as seen by a read or a watch, if it is
// newer than what was known.
func (l *Lease) observe(s snapshot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !s.revKnown {
		l.seenOK = false
		return
	}
	if !l.seenOK || s.rev >= l.seen.rev {
		l.seen, l.seenOK = s, true
	}
}

func (l *Lease) lastSeen() (snapshot, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen, l.seenOK
}
