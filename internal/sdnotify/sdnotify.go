// Package sdnotify tells systemd how localdns is doing: readiness, status,
// reload, shutdown and watchdog keep-alives, over the sd_notify protocol
// (github.com/coreos/go-systemd/v22/daemon).
//
// Messages and when the daemon sends them:
//
//	Ready(status)     READY=1 + STATUS=..., only after every listener answered a
//	                  self-probe and the conntrack bypass is in place, so that
//	                  kubelet (ordered After= us) never starts against a dead cache.
//	Status(s)         STATUS=..., a one-line summary shown by `systemctl status`.
//	Reloading()       RELOADING=1 + MONOTONIC_USEC on SIGHUP; send Ready again
//	                  when the new configuration serves.
//	Stopping(status)  STOPPING=1 first thing on shutdown.
//	RunWatchdog       WATCHDOG=1 at a fifth of WatchdogSec, only while a real
//	                  DNS probe of our own listeners passes.
//
// Every function is a no-op returning nil when NOTIFY_SOCKET is unset (the
// binary run by hand, in a container or in tests), so callers never need to
// ask whether they run under systemd.
//
// # What the watchdog proves, and what it must not depend on
//
// The watchdog answers one question: "is this process still serving DNS on its
// listeners?". The probe (see Probe and ListenerProbe) sends a real query for
// health-check.localdns.local to each listener over UDP and TCP. That zone is
// answered locally by CoreDNS's whoami plugin, so a probe walks the socket, the
// server goroutines and the plugin chain but never leaves the node.
//
// An upstream outage must NOT stop the pings: when cluster CoreDNS or the VNet
// DNS is down, localdns is exactly what keeps pods resolving (serve-stale from
// its cache), and a watchdog restart would throw that cache away at the worst
// moment. Never probe a name that is forwarded, and never gate the pings on
// upstream health. AKS's script gates on the same local whoami zone for the
// same reason.
//
// # Metrics
//
// NewMetrics registers localdns_watchdog_probe_duration_seconds (histogram) and
// localdns_watchdog_probe_failures_total (counter) on the registerer it is given.
// CoreDNS's prometheus plugin serves prometheus.DefaultRegisterer, so the daemon
// passes that to see them on :9253 next to the CoreDNS metrics. The package
// holds no global state; metrics exist only when the caller creates them.
package sdnotify

import (
	"fmt"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Enabled reports whether a service manager listens for notifications
// (NOTIFY_SOCKET is set).
func Enabled() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

// Ready tells systemd that start-up (or a reload) is complete. status, when not
// empty, is sent in the same datagram as STATUS=.
func Ready(status string) error {
	return send(daemon.SdNotifyReady, status)
}

// Status updates the free-form status line shown by `systemctl status`.
func Status(status string) error {
	return send("", status)
}

// Reloading tells systemd a configuration reload started. Ready must follow
// once the new configuration serves. MONOTONIC_USEC is included so that
// Type=notify-reload managers (systemd >= 253) accept the message too.
func Reloading() error {
	msg := daemon.SdNotifyReloading
	if usec := strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"); usec != "" {
		msg += "\n" + usec
	}
	return send(msg, "")
}

// Stopping tells systemd that shutdown began, with an optional status line.
func Stopping(status string) error {
	return send(daemon.SdNotifyStopping, status)
}

// Watchdog sends one keep-alive. Callers normally use RunWatchdog, which gates
// the keep-alive on a probe; this is exposed for a one-off ping, e.g. right
// after a slow reload.
func Watchdog() error {
	return send(daemon.SdNotifyWatchdog, "")
}

// send writes state (possibly empty) and STATUS=status (if status is not empty)
// as one datagram. Status lines are single-line by protocol: newlines are
// replaced so a multi-line error cannot inject other assignments.
func send(state, status string) error {
	var lines []string
	if state != "" {
		lines = append(lines, state)
	}
	if status != "" {
		status = strings.NewReplacer("\n", " ", "\r", " ").Replace(status)
		lines = append(lines, "STATUS="+status)
	}
	if len(lines) == 0 {
		return nil
	}
	msg := strings.Join(lines, "\n")
	if _, err := daemon.SdNotify(false, msg); err != nil {
		first, _, _ := strings.Cut(msg, "\n")
		return fmt.Errorf("sd_notify %s: %w", first, err)
	}
	return nil
}
