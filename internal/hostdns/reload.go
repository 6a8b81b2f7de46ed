package hostdns

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// reloadTimeout bounds one reload command.
const reloadTimeout = 15 * time.Second

// Reload is the production Config.Reload: `networkctl reload` for networkd
// (it re-reads .network files and drop-ins and reconfigures the links whose
// configuration changed), `systemctl try-reload-or-restart
// systemd-resolved.service` for resolved (reload where the unit supports it,
// restart where it does not, nothing when resolved is not running).
func Reload(kind string) error {
	var argv []string
	switch kind {
	case KindNetworkd:
		argv = []string{"networkctl", "reload"}
	case KindResolved:
		argv = []string{"systemctl", "try-reload-or-restart", "systemd-resolved.service"}
	default:
		return fmt.Errorf("hostdns: unknown resolver kind %q", kind)
	}
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
