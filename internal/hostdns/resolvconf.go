package hostdns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/localdns/localdns/internal/config"
)

// PollInterval is how often WaitListenerGone reads resolv.conf.
const PollInterval = 250 * time.Millisecond

// ErrStillListed is returned by WaitListenerGone when resolv.conf still lists
// the listener at the deadline.
var ErrStillListed = errors.New("hostdns: resolv.conf still lists the listener")

// WaitListenerGone waits until the resolv.conf at path no longer lists
// listener as a nameserver (a missing file lists nothing), reading it every
// PollInterval for at most timeout. Call it after Revert and before
// discovering the VNet DNS servers from that file: networkd and resolved
// rewrite it asynchronously after a reload, and until they do it holds our
// listener instead of the VNet servers. AKS LocalDNS waits the same way (up
// to 5 s).
func WaitListenerGone(ctx context.Context, path string, listener netip.Addr, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	for {
		listed, err := listsNameserver(path, listener)
		if err != nil {
			return err
		}
		if !listed {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%w: %s names %s after %v", ErrStillListed, path, listener, timeout)
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// listsNameserver reports whether the resolv.conf at path has a nameserver
// line for a.
func listsNameserver(path string, a netip.Addr) (bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("hostdns: %w", err)
	}
	return slices.Contains(config.ParseResolvConf(data), a.Unmap()), nil
}
