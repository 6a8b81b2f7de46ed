package netsetup

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/localdns/localdns/internal/atomicfile"
)

// stateFile is the name of the state file under Config.StateDir.
const stateFile = "netsetup.json"

// state is what we installed, kept on disk so that Teardown after a SIGKILL
// removes exactly that.
type state struct {
	// Link holds the addresses: the configured link name, or "lo".
	Link string `json:"link"`
	// Fallback is true when Link is "lo" because the kernel has no dummy link.
	Fallback bool   `json:"fallback,omitempty"`
	Reason   string `json:"reason,omitempty"`
	// CreatedLink is true when Link is our dummy link (created or adopted by
	// name); Teardown deletes it.
	CreatedLink bool `json:"createdLink,omitempty"`
	// Owned are the addresses we added to Link. On "lo" only these are
	// removed by Teardown; an address found there already is not ours.
	Owned []netip.Addr `json:"owned,omitempty"`
	// Table is the nftables table (inet family) we installed, "" before
	// EnsureRules.
	Table string `json:"table,omitempty"`
}

func (st *state) own(a netip.Addr) {
	if !slices.Contains(st.Owned, a) {
		st.Owned = append(st.Owned, a)
	}
}

func (st *state) disown(a netip.Addr) {
	st.Owned = slices.DeleteFunc(st.Owned, func(b netip.Addr) bool { return a == b })
}

func statePath(cfg Config) string {
	if cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(cfg.StateDir, stateFile)
}

// loadState reads the state file. It returns nil, nil when there is none.
func loadState(cfg Config) (*state, error) {
	p := statePath(cfg)
	if p == "" {
		return nil, nil
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netsetup: reading state: %w", err)
	}
	st := new(state)
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("netsetup: state file %s: %w", p, err)
	}
	return st, nil
}

// saveState writes the state file atomically (temporary file and rename).
func saveState(cfg Config, st *state) error {
	p := statePath(cfg)
	if p == "" {
		return nil
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("netsetup: state dir: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("netsetup: encoding state: %w", err)
	}
	if err := atomicfile.Write(p, 0o600, func(w io.Writer) error { _, err := w.Write(append(b, '\n')); return err }); err != nil {
		return fmt.Errorf("netsetup: writing state: %w", err)
	}
	return nil
}

func removeState(cfg Config) error {
	p := statePath(cfg)
	if p == "" {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("netsetup: removing state: %w", err)
	}
	return nil
}
