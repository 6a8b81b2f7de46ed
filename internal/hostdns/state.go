package hostdns

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// linkState is what we read from networkd's state file for one link,
// /run/systemd/netif/links/<ifindex>: lines of KEY=VALUE that networkd
// writes (src/network/networkd-state-file.c, link_save) and libsystemd's
// sd_network_link_get_network_file(3) reads.
type linkState struct {
	// NetworkFile is the .network file networkd applies to the link
	// (NETWORK_FILE=); empty when networkd does not manage the link or has
	// no state file for it.
	NetworkFile string
	// DropIns are the drop-ins networkd applies (NETWORK_FILE_DROPINS=, a
	// quoted, ':'-separated list with ':' escaped as \x3a); HasDropIns says
	// whether this networkd reports them at all (newer systemd does).
	DropIns    []string
	HasDropIns bool
}

// readLinkState reads a link state file; a missing file is a link networkd
// does not know.
func readLinkState(path string) (linkState, error) {
	var st linkState
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("hostdns: networkd link state: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), "=")
		if !ok || strings.HasPrefix(key, "#") {
			continue
		}
		value = unquote(value)
		switch key {
		case "NETWORK_FILE":
			st.NetworkFile = value
		case "NETWORK_FILE_DROPINS":
			st.HasDropIns = true
			if value == "" {
				continue
			}
			for _, d := range strings.Split(value, ":") {
				st.DropIns = append(st.DropIns, unescape(d))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return st, fmt.Errorf("hostdns: networkd link state %s: %w", path, err)
	}
	return st, nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

// unescape undoes systemd's xescape(): \xHH is the byte HH.
func unescape(s string) string {
	if !strings.Contains(s, `\x`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
