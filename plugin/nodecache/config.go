package nodecache

import (
	"fmt"
	"strconv"
	"time"

	"github.com/coredns/caddy"
)

type staleMode uint8

const (
	staleOff staleMode = iota
	staleImmediate
	staleVerify
)

func (m staleMode) String() string {
	return [...]string{"off", "immediate", "verify"}[m]
}

// policy is the per-block part of the configuration; it applies to the
// entries written and served through that block.
type policy struct {
	maxTTL        uint32 // cap of positive TTLs, seconds
	denialTTL     uint32 // cap of negative TTLs, seconds
	mode          staleMode
	staleWindow   uint32 // seconds an expired entry may still be served
	verifyTimeout time.Duration
	prefetch      uint32 // hits before an entry is prefetched; 0 disables
	maxUDP        uint16 // largest UDP answer, bytes (max_udp_size)
}

// config is one nodecache block. memory and the snapshot are process-wide:
// every block of an instance must agree on them.
type config struct {
	policy
	memory        int64
	snapshotPath  string
	snapshotEvery time.Duration
	// pins are the block's pinned names (lower-case wire form), refreshed
	// every pinRefresh (pin.go).
	pins       [][]byte
	pinRefresh time.Duration
}

const (
	defaultMaxTTL        = 3600
	defaultDenialTTL     = 3600
	defaultStaleWindow   = 3600
	defaultVerifyTimeout = 1800 * time.Millisecond
	defaultPrefetch      = 10
	defaultMemory        = 64 << 20
	minMemory            = 1 << 20
	defaultSnapshotEvery = 60 * time.Second
	maxTTLLimit          = 7 * 24 * 3600
)

func defaultConfig() config {
	return config{
		policy: policy{
			maxTTL:        defaultMaxTTL,
			denialTTL:     defaultDenialTTL,
			mode:          staleImmediate,
			staleWindow:   defaultStaleWindow,
			verifyTimeout: defaultVerifyTimeout,
			prefetch:      defaultPrefetch,
			maxUDP:        advertisedUDPSize,
		},
		memory:        defaultMemory,
		snapshotEvery: defaultSnapshotEvery,
		pinRefresh:    defaultPinRefresh,
	}
}

// parse reads one nodecache block.
func parse(c *caddy.Controller) (config, error) {
	cfg := defaultConfig()
	for c.Next() {
		if len(c.RemainingArgs()) != 0 {
			return cfg, c.ArgErr()
		}
		for c.NextBlock() {
			dir := c.Val()
			args := c.RemainingArgs()
			var err error
			switch dir {
			case "max_ttl":
				cfg.maxTTL, err = seconds(dir, args)
			case "denial_ttl":
				cfg.denialTTL, err = seconds(dir, args)
			case "serve_stale":
				err = parseServeStale(&cfg.policy, args)
			case "verify_timeout":
				if len(args) != 1 {
					return cfg, c.ArgErr()
				}
				cfg.verifyTimeout, err = time.ParseDuration(args[0])
				if err == nil && cfg.verifyTimeout <= 0 {
					err = fmt.Errorf("verify_timeout must be positive, got %s", args[0])
				}
			case "prefetch":
				if len(args) != 1 {
					return cfg, c.ArgErr()
				}
				var n uint64
				n, err = strconv.ParseUint(args[0], 10, 32)
				cfg.prefetch = uint32(n)
			case "max_udp_size":
				if len(args) != 1 {
					return cfg, c.ArgErr()
				}
				var n uint64
				n, err = strconv.ParseUint(args[0], 10, 16)
				if err == nil && n < 512 {
					err = fmt.Errorf("max_udp_size must be at least 512, got %d", n)
				}
				cfg.maxUDP = uint16(n)
			case "memory":
				if len(args) != 1 {
					return cfg, c.ArgErr()
				}
				cfg.memory, err = strconv.ParseInt(args[0], 10, 64)
				if err == nil && cfg.memory < minMemory {
					err = fmt.Errorf("memory must be at least %d bytes, got %d", minMemory, cfg.memory)
				}
			case "snapshot":
				if len(args) < 1 || len(args) > 2 {
					return cfg, c.ArgErr()
				}
				cfg.snapshotPath = args[0]
				if len(args) == 2 {
					cfg.snapshotEvery, err = time.ParseDuration(args[1])
					if err == nil && cfg.snapshotEvery < time.Second {
						err = fmt.Errorf("snapshot interval must be at least 1s, got %s", args[1])
					}
				}
			case "pin":
				var names [][]byte
				names, err = parsePins(args)
				cfg.pins = append(cfg.pins, names...)
			case "pin_refresh":
				if len(args) != 1 {
					return cfg, c.ArgErr()
				}
				cfg.pinRefresh, err = time.ParseDuration(args[0])
				if err == nil && cfg.pinRefresh < minPinRefresh {
					err = fmt.Errorf("must be at least %s, got %s", minPinRefresh, args[0])
				}
			default:
				return cfg, c.Errf("unknown property %q", dir)
			}
			if err != nil {
				return cfg, c.Errf("%s: %v", dir, err)
			}
		}
	}
	return cfg, nil
}

func seconds(dir string, args []string) (uint32, error) {
	if len(args) != 1 {
		return 0, fmt.Errorf("%s takes one argument, got %d", dir, len(args))
	}
	n, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("not a number of seconds: %q", args[0])
	}
	if n > maxTTLLimit {
		return 0, fmt.Errorf("%d s is more than the limit of %d s", n, maxTTLLimit)
	}
	return uint32(n), nil
}

func parseServeStale(p *policy, args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return fmt.Errorf("want immediate|verify|off and an optional window in seconds, got %d arguments", len(args))
	}
	switch args[0] {
	case "immediate":
		p.mode = staleImmediate
	case "verify":
		p.mode = staleVerify
	case "off":
		if len(args) != 1 {
			return fmt.Errorf("serve_stale off takes no window")
		}
		p.mode, p.staleWindow = staleOff, 0
		return nil
	default:
		return fmt.Errorf("unknown mode %q, want immediate, verify or off", args[0])
	}
	p.staleWindow = defaultStaleWindow
	if len(args) == 2 {
		n, err := strconv.ParseUint(args[1], 10, 32)
		if err != nil || n == 0 {
			return fmt.Errorf("stale window must be a positive number of seconds, got %q", args[1])
		}
		p.staleWindow = uint32(n)
	}
	return nil
}
