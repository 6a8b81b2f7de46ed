package delayproxy

import (
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Scheduler runs callbacks at precise times: one goroutine, locked to its
// OS thread, keeps a min-heap of due times and blocks in read(2) on a
// timerfd armed (absolute, CLOCK_MONOTONIC) for the earliest one.
//
// Go's own timers are not precise enough for a sub-millisecond to 1 ms hop:
// an idle runtime sleeps in epoll_pwait, whose timeout is in milliseconds,
// so time.AfterFunc(250µs) fires after about 1.1 ms and AfterFunc(1ms)
// after 1.2 ms (p50, measured on the lab machine; see the package doc). A
// timerfd is an hrtimer the kernel fires with microsecond precision and no
// timer slack, and the goroutine waits for it in a plain blocking syscall, so
// it runs again when the timer fires, not when the runtime next polls.
// Adding an item earlier than the armed one re-arms the timerfd (one
// timerfd_settime call, no wake-up); the goroutine re-arms it for the next
// item after each round. Due items run their callback on the scheduler's
// goroutine, so callbacks must be short (a send, closing a channel).
type Scheduler struct {
	fd int
	t0 time.Time // paired with m0, CLOCK_MONOTONIC at t0
	m0 int64

	mu     sync.Mutex
	items  itemHeap
	armed  int64 // due time the timerfd is armed for, 0 if none
	closed bool
	done   chan struct{}
}

type item struct {
	due int64 // CLOCK_MONOTONIC nanoseconds
	f   func()
}

// NewScheduler starts a scheduler.
func NewScheduler() (*Scheduler, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("scheduler timerfd: %w", err)
	}
	s := &Scheduler{fd: fd, done: make(chan struct{})}
	var ts unix.Timespec
	s.t0 = time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("scheduler clock: %w", err)
	}
	s.m0 = ts.Nano()
	go s.run()
	return s, nil
}

// now returns CLOCK_MONOTONIC in nanoseconds from Go's monotonic clock (a
// vDSO read instead of a clock_gettime syscall).
func (s *Scheduler) now() int64 { return s.m0 + int64(time.Since(s.t0)) }

// After runs f on the scheduler's goroutine d from now. After Close, f runs
// at once on the caller's goroutine, so nobody waiting for it is stranded.
func (s *Scheduler) After(d time.Duration, f func()) {
	s.at(s.now()+int64(max(d, 0)), f)
}

// At runs f on the scheduler's goroutine at t, as After does. Callbacks due
// at different times run in the order of their times.
func (s *Scheduler) At(t time.Time, f func()) {
	s.at(s.m0+int64(t.Sub(s.t0)), f)
}

func (s *Scheduler) at(due int64, f func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		f()
		return
	}
	s.items.push(item{due: due, f: f})
	if s.armed == 0 || due < s.armed {
		s.arm(due)
	}
	s.mu.Unlock()
}

// Sleep blocks the calling goroutine for d, released by the scheduler.
func (s *Scheduler) Sleep(d time.Duration) {
	ch := make(chan struct{})
	s.After(d, func() { close(ch) })
	<-ch
}

// Close stops the scheduler's goroutine after running every pending
// callback at once, and waits for it to exit.
func (s *Scheduler) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	s.closed = true
	s.arm(1) // long past: wakes the goroutine's read
	s.mu.Unlock()
	<-s.done
	return unix.Close(s.fd)
}

// arm sets the timerfd to fire at due; s.mu held.
func (s *Scheduler) arm(due int64) {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(due)}
	if err := unix.TimerfdSettime(s.fd, unix.TFD_TIMER_ABSTIME, &spec, nil); err != nil {
		// Only a closed descriptor fails here, and Close drains the heap.
		return
	}
	s.armed = due
}

func (s *Scheduler) run() {
	// The goroutine blocks in read(2) on its own thread, so it runs again
	// the moment the timer fires, without waiting for the runtime to poll
	// the network. The thread is never unlocked and exits with it.
	runtime.LockOSThread()
	defer close(s.done)
	var batch []item
	buf := make([]byte, 8)
	for {
		s.mu.Lock()
		now := s.now()
		for len(s.items) > 0 && (s.closed || s.items[0].due <= now) {
			batch = append(batch, s.items.pop())
		}
		closed := s.closed
		s.armed = 0
		if len(s.items) > 0 && !closed {
			s.arm(s.items[0].due)
		}
		s.mu.Unlock()
		for i := range batch {
			batch[i].f()
			batch[i] = item{}
		}
		batch = batch[:0]
		if closed {
			return
		}
		if _, err := unix.Read(s.fd, buf); err != nil && err != unix.EINTR {
			s.mu.Lock()
			s.closed = true
			s.mu.Unlock()
		}
	}
}

// itemHeap is a binary min-heap on due (container/heap without the
// interface conversions).
type itemHeap []item

func (h *itemHeap) push(it item) {
	*h = append(*h, it)
	a := *h
	i := len(a) - 1
	for i > 0 {
		p := (i - 1) / 2
		if a[p].due <= a[i].due {
			break
		}
		a[p], a[i] = a[i], a[p]
		i = p
	}
}

func (h *itemHeap) pop() item {
	a := *h
	top := a[0]
	n := len(a) - 1
	a[0] = a[n]
	a[n] = item{}
	a = a[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && a[l].due < a[m].due {
			m = l
		}
		if r < n && a[r].due < a[m].due {
			m = r
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}
