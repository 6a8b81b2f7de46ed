package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/localdns/localdns/internal/atomicfile"
	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/daemon"
)

// limitsDropIn is the file name of both drop-ins `localdns limits` writes.
const limitsDropIn = "50-limits.conf"

// dropIn is one systemd drop-in: the unit it extends and its text.
type dropIn struct {
	unit string
	text string
}

// limitDropIns renders the profile's cpuLimitInMilliCores and
// memoryLimitInMB as drop-ins: the slice's CPUQuota and MemoryMax, and the
// service's GOMEMLIMIT (which replaces the unit's own Environment= value).
func limitDropIns(p *config.Profile, from string) []dropIn {
	head := fmt.Sprintf("# Written by `localdns limits` from %s\n# (cpuLimitInMilliCores %d, memoryLimitInMB %d). Do not edit: change the\n# profile and run systemctl daemon-reload.\n",
		from, p.CPULimitInMilliCores, p.MemoryLimitInMB)
	return []dropIn{
		{"localdns.slice", head + fmt.Sprintf("[Slice]\nCPUQuota=%s\nMemoryMax=%s\n", p.CPUQuota(), p.MemoryMax())},
		{"localdns.service", head + fmt.Sprintf("# The Go collector works harder below this; cache budget %dMi.\n[Service]\nEnvironment=GOMEMLIMIT=%dMiB\n",
			p.Cache.MaxMemory>>20, p.GoMemLimit()>>20)},
	}
}

func limitsCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("limits", "[--config FILE] [--unit-dir DIR]", strings.TrimSpace(`
Turn the profile's cpuLimitInMilliCores and memoryLimitInMB (AKS's node-level
fields) into systemd drop-ins: localdns.slice gets CPUQuota= and MemoryMax=,
localdns.service gets the Go memory limit (GOMEMLIMIT) that fits in them.

Without --unit-dir the drop-ins are printed. With it they are written as
DIR/localdns.slice.d/`+limitsDropIn+` and DIR/localdns.service.d/`+limitsDropIn+`.
The package runs this as a systemd generator on every boot and daemon-reload
(DIR = /run/systemd/generator), so a changed profile takes effect with
  systemctl daemon-reload && systemctl try-restart localdns.service
An invalid profile writes nothing and exits 1.`), stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (default: "+daemon.NodeProfilePath+")")
	unitDir := fs.String("unit-dir", "", "write the drop-ins under `DIR` instead of printing them")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	path := *cfgPath
	if path == "" {
		path = daemon.NodeProfilePath
	}
	p, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "localdns limits: %v\n", err)
		return 1
	}
	for _, d := range limitDropIns(p, path) {
		if *unitDir == "" {
			fmt.Fprintf(stdout, "# %s.d/%s\n%s\n", d.unit, limitsDropIn, d.text)
			continue
		}
		dir := filepath.Join(*unitDir, d.unit+".d")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			fmt.Fprintf(stderr, "localdns limits: %v\n", err)
			return 1
		}
		file := filepath.Join(dir, limitsDropIn)
		if err := atomicfile.Write(file, 0o644, func(w io.Writer) error {
			_, err := io.WriteString(w, d.text)
			return err
		}); err != nil {
			fmt.Fprintf(stderr, "localdns limits: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "wrote %s\n", file)
	}
	return 0
}
