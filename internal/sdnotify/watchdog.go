package sdnotify

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/localdns/localdns/internal/promreg"
)

const (
	// pingFraction: a probe and a ping every WatchdogSec/5. systemd kills the
	// service after WatchdogSec without a ping, so it takes five failed
	// probes in a row (not one slow one) to get restarted. sd_watchdog_enabled(3)
	// recommends at most half; AKS's script uses the same fifth.
	pingFraction = 5
	// maxProbeTimeout caps the probe timeout: a listener on this node that
	// takes longer than this to answer a local zone is not serving.
	maxProbeTimeout = 2 * time.Second
)

// Intervals derives the ping interval and the probe timeout from the
// watchdog timeout systemd granted (WATCHDOG_USEC): a ping every fifth of it,
// and a probe timeout of half the interval, at most 2 s, so a hanging probe
// can never by itself delay the next tick.
func Intervals(watchdog time.Duration) (interval, timeout time.Duration) {
	interval = watchdog / pingFraction
	timeout = min(interval/2, maxProbeTimeout)
	return interval, timeout
}

// Result is what one watchdog tick did, for logging.
type Result struct {
	Latency   time.Duration // how long the probe took
	ProbeErr  error         // nil if the probe passed
	Pinged    bool          // WATCHDOG=1 was sent
	NotifyErr error         // sending WATCHDOG=1 failed
}

// Option changes how RunWatchdog works.
type Option func(*watchdogConfig)

type watchdogConfig struct {
	interval time.Duration
	timeout  time.Duration
	observe  func(Result)
	metrics  *Metrics
}

// WithInterval overrides the ping interval derived from WATCHDOG_USEC. It is
// ignored unless shorter than WATCHDOG_USEC: a longer one would be a
// guaranteed watchdog kill.
func WithInterval(d time.Duration) Option {
	return func(c *watchdogConfig) { c.interval = d }
}

// WithProbeTimeout overrides the per-tick probe timeout. It is clamped to the
// interval.
func WithProbeTimeout(d time.Duration) Option {
	return func(c *watchdogConfig) { c.timeout = d }
}

// WithObserver calls f after every tick with what happened, e.g. to log probe
// failures (rate-limit in f if needed: it is called every tick).
func WithObserver(f func(Result)) Option {
	return func(c *watchdogConfig) { c.observe = f }
}

// WithMetrics records probe latency and failures in m.
func WithMetrics(m *Metrics) Option {
	return func(c *watchdogConfig) { c.metrics = m }
}

// RunWatchdog keeps systemd's watchdog fed for as long as probe passes, until
// ctx is cancelled. It probes at once and then every interval (see Intervals),
// each probe bounded by the probe timeout; WATCHDOG=1 is sent only after a
// probe that returned nil. A failing probe sends nothing, so five failures in
// a row let systemd kill and restart the service; a probe that recovers
// resumes the pings.
//
// The probe must test our own listeners against a locally answered name (use
// ListenerProbe), never an upstream: see the package documentation.
//
// RunWatchdog returns nil at once when there is no watchdog to feed
// (NOTIFY_SOCKET unset, WatchdogSec unset, or WATCHDOG_PID naming another
// process), and nil when ctx is cancelled. It returns an error only if
// WATCHDOG_USEC cannot be parsed. Cancel it before sending Stopping.
func RunWatchdog(ctx context.Context, probe func(context.Context) error, opts ...Option) error {
	if !Enabled() {
		return nil
	}
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	if wd <= 0 {
		return nil
	}
	var cfg watchdogConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.interval <= 0 || cfg.interval >= wd {
		cfg.interval, _ = Intervals(wd)
	}
	if cfg.timeout <= 0 || cfg.timeout > cfg.interval {
		cfg.timeout = min(cfg.interval/2, maxProbeTimeout)
	}

	tick := time.NewTicker(cfg.interval)
	defer tick.Stop()
	for {
		res, done := runOnce(ctx, probe, cfg.timeout)
		if done {
			return nil
		}
		if cfg.metrics != nil {
			cfg.metrics.observe(res)
		}
		if cfg.observe != nil {
			cfg.observe(res)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// runOnce probes and pings on success. done is true when ctx ended during the
// probe: that is shutdown, not a failure, and is neither counted nor pinged.
func runOnce(ctx context.Context, probe func(context.Context) error, timeout time.Duration) (res Result, done bool) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now()
	res.ProbeErr = probe(pctx)
	res.Latency = time.Since(start)
	cancel()
	if ctx.Err() != nil {
		return res, true
	}
	if res.ProbeErr == nil {
		res.NotifyErr = Watchdog()
		res.Pinged = res.NotifyErr == nil
	}
	return res, false
}

// Metrics are the watchdog's Prometheus metrics.
type Metrics struct {
	duration prometheus.Histogram
	failures prometheus.Counter
}

// NewMetrics creates the watchdog metrics and registers them on reg:
// localdns_watchdog_probe_duration_seconds and
// localdns_watchdog_probe_failures_total. If they are already registered
// (a second daemon instance in the same process), the registered ones are
// reused.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "localdns",
			Subsystem: "watchdog",
			Name:      "probe_duration_seconds",
			Help:      "Time the watchdog's self-probe of the local listeners took, failed probes included.",
			// 100 µs .. 1.6 s: a healthy local probe is well under a
			// millisecond; the top buckets catch a saturated process.
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8),
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "localdns",
			Subsystem: "watchdog",
			Name:      "probe_failures_total",
			Help:      "Watchdog self-probes that failed; no WATCHDOG=1 is sent after a failed probe.",
		}),
	}
	var err error
	if m.duration, err = promreg.Register(reg, m.duration); err != nil {
		return nil, fmt.Errorf("register watchdog metrics: %w", err)
	}
	if m.failures, err = promreg.Register(reg, m.failures); err != nil {
		return nil, fmt.Errorf("register watchdog metrics: %w", err)
	}
	return m, nil
}

func (m *Metrics) observe(r Result) {
	m.duration.Observe(r.Latency.Seconds())
	if r.ProbeErr != nil {
		m.failures.Inc()
	}
}
