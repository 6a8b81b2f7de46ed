// Command localdns is a node-local DNS cache for Kubernetes nodes: a CoreDNS
// build with localdns's own plugins, configured by an AKS-style profile.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/daemon"
	"github.com/localdns/localdns/internal/netsetup"
	"github.com/localdns/localdns/internal/plugins"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"run", "serve DNS (node profile, a given profile or Corefile, or the embedded laptop profile)", runCmd},
		{"render", "print the Corefile a profile renders to", renderCmd},
		{"validate", "check a profile and print every problem found", validateCmd},
		{"teardown", "hand the listeners to the fallback and remove what localdns installed (for ExecStopPost); --purge removes all", teardownCmd},
		{"fallback", "send queries to the listeners straight to the upstreams until localdns serves (for the socket unit's start)", fallbackCmd},
		{"limits", "systemd drop-ins for the profile's cpuLimitInMilliCores and memoryLimitInMB", limitsCmd},
		{"probe", "query the probe zone on every listener over UDP and TCP", probeCmd},
		{"status", "show at a glance whether this node's DNS is healthy", statusCmd},
		{"top", "show the busiest clients (pods) and names over the last minute", topCmd},
		{"version", "print localdns, CoreDNS and Go versions", versionCmd},
		{"plugins", "list the compiled-in CoreDNS plugins in chain order", pluginsCmd},
	}
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "localdns: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "localdns: a node-local DNS cache for Kubernetes nodes (CoreDNS inside).")
	fmt.Fprintln(w, "\nUsage: localdns COMMAND [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'localdns COMMAND --help' for a command's flags.")
}

func newFlags(name, synopsis, doc string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: localdns %s %s\n\n%s\n", name, synopsis, doc)
		var hasFlags bool
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(fs.Output(), "\nFlags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse handles --help (exit 0) and bad flags (exit 2).
func parse(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "localdns %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}

func runCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("run", "[--config FILE | --corefile FILE]", strings.TrimSpace(`
Serve DNS until SIGTERM or SIGINT; SIGHUP re-reads the configuration and swaps
it without dropping queries (an invalid new configuration is logged and the
running one keeps serving).

Without flags, run uses `+daemon.NodeProfilePath+` when it exists (a node), and
otherwise an embedded laptop profile that needs no privilege and changes
nothing on the machine: listeners on 127.0.0.1:1053 (node) and 127.0.0.2:1053
(cluster), forwarding to the nameservers of the machine's resolv.conf.`), stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (YAML or JSON)")
	corePath := fs.String("corefile", "", "hand-written Corefile `FILE`, run with localdns's compiled-in plugins")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *cfgPath != "" && *corePath != "" {
		fmt.Fprintln(stderr, "localdns run: --config and --corefile exclude each other")
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "localdns run: --log-level: %v\n", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	err := daemon.Run(ctx, daemon.Options{ConfigPath: *cfgPath, CorefilePath: *corePath, Logger: logger, Version: buildVersion()})
	if err != nil {
		code := daemon.ExitCode(err)
		logger.Error("localdns failed", "err", err, "exitCode", code)
		return code
	}
	return 0
}

// profileFor loads --config, the node profile, or the laptop profile.
func profileFor(path string) (*config.Profile, string, error) {
	switch {
	case path != "":
		p, err := config.Load(path)
		return p, path, err
	case fileExists(daemon.NodeProfilePath):
		p, err := config.Load(daemon.NodeProfilePath)
		return p, daemon.NodeProfilePath, err
	default:
		return config.Laptop(), "embedded laptop profile", nil
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func teardownCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("teardown", "[--config FILE] [--keep-if-held] [--purge]", strings.TrimSpace(`
Hand the listeners to the fallback (queries to them go straight to the
upstreams, so pods keep resolving) and remove the listener addresses, the
link, the conntrack-bypass table and the state file localdns installed.
Idempotent, and safe after a SIGKILL: use it as ExecStopPost. With a broken
profile the fallback comes from the last valid profile's fallback file.

With --keep-if-held nothing is changed while a socket is still bound to a
listener address: that is systemd's localdns.socket holding the sockets while
the service restarts, and the kernel must keep queueing queries for the next
process. localdns.service uses --keep-if-held; localdns.socket does not.

With --purge the fallback and its file go too, leaving the node as it was
before localdns: for an uninstall, after kubelet no longer points pods at the
listeners.`), stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (default: the node profile)")
	keep := fs.Bool("keep-if-held", false, "change nothing while a socket is bound to a listener address")
	purge := fs.Bool("purge", false, "remove the fallback too (uninstall)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	opts := daemon.TeardownOptions{KeepIfHeld: *keep, Purge: *purge}
	p, from, err := profileFor(*cfgPath)
	if err != nil {
		// A broken profile must not leave the node's network behind (this
		// runs in ExecStopPost after a crash loop on that very profile):
		// tear down by the fallback file, the defaults and the state file
		// netsetup wrote.
		fmt.Fprintf(stderr, "localdns teardown: %v\nlocaldns teardown: using the last valid profile's fallback file and the defaults\n", err)
		p, from, opts.ProfileBroken = config.Default(), "defaults", true
	}
	if !p.Network.Manage {
		fmt.Fprintf(stdout, "%s: network.manage is false: nothing was installed, nothing to remove\n", from)
		return 0
	}
	res, err := daemon.Teardown(p, opts)
	if err != nil {
		fmt.Fprintf(stderr, "localdns teardown: %v\n", err)
		return 1
	}
	switch {
	case res.Kept:
		fmt.Fprintf(stdout, "kept: %s\n", res.Why)
	case *purge:
		fmt.Fprintln(stdout, "removed: fallback, listener addresses, link, conntrack-bypass table and state (where present)")
	case res.FallbackFrom != "":
		fmt.Fprintf(stdout, "fallback in place (routes from %s); removed: listener addresses, link, conntrack-bypass table and state\n", res.FallbackFrom)
	default:
		fmt.Fprintf(stdout, "removed: listener addresses, link, conntrack-bypass table and state; no fallback: %s\n", res.NoFallback)
	}
	return 0
}

func fallbackCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("fallback", "[--config FILE]", strings.TrimSpace(`
Send queries to the listeners straight to the upstreams (nftables DNAT), until
localdns serves them and takes them back. localdns.socket runs it when it
starts, so that pods resolve from the node's first boot on, even if localdns
never comes up. The routes come from the profile, or from the last valid
profile's fallback file when the profile is broken. Exit 1 when no fallback
could be installed.`), stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (default: the node profile)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	p, _, err := profileFor(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "localdns fallback: %v\nlocaldns fallback: using the last valid profile's fallback file\n", err)
		p = nil
	}
	cfg, from, err := daemon.FallbackConfig(p)
	if err != nil {
		fmt.Fprintf(stderr, "localdns fallback: %v\n", err)
		return 1
	}
	if err := netsetup.InstallFallback(cfg); err != nil {
		fmt.Fprintf(stderr, "localdns fallback: %v\n", err)
		return 1
	}
	for _, r := range cfg.Fallback {
		fmt.Fprintf(stdout, "fallback: %s -> %v (from %s)\n", r.Listener, r.Upstreams, from)
	}
	return 0
}

func probeCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("probe", "[--config FILE]", "Query health-check.localdns.local on every listener of the profile over UDP and\nTCP. Exit 0 when all answer, 1 otherwise.", stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (default: the node profile, or the laptop profile)")
	timeout := fs.Duration("timeout", 2*time.Second, "time allowed for all probes")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	p, _, err := profileFor(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "localdns probe: %v\n", err)
		return daemon.ExitConfig
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	failed := 0
	listeners := []netip.AddrPort{netip.AddrPortFrom(p.NodeListener, p.Port), netip.AddrPortFrom(p.ClusterListener, p.Port)}
	for _, l := range daemon.ProbeListeners(ctx, listeners) {
		if !l.OK {
			failed++
			fmt.Fprintf(stdout, "FAIL %s/%s: %s\n", l.Addr, l.Network, l.Error)
			continue
		}
		fmt.Fprintf(stdout, "ok   %s/%s %s\n", l.Addr, l.Network, time.Duration(l.Latency))
	}
	if failed > 0 {
		return 1
	}
	return 0
}

func renderCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("render", "[--config FILE]", "Print the Corefile that 'localdns run' would use for the profile (the node\nprofile, or the embedded laptop profile when there is none). VNet DNS servers\nset to auto are discovered from resolv.conf as run would.", stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (YAML or JSON)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	src, err := daemon.Options{ConfigPath: *cfgPath}.Load()
	if err != nil {
		fmt.Fprintf(stderr, "localdns render: %v\n", err)
		return 1
	}
	fmt.Fprint(stdout, src.Corefile)
	return 0
}

func validateCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("validate", "--config FILE", "Check a profile. Exit 0 when it is valid; otherwise print every problem\n(field path, bad value, why) and exit 1.", stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (YAML or JSON)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "localdns validate: --config FILE is required")
		return 2
	}
	if _, err := config.Load(*cfgPath); err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid\n", *cfgPath)
	return 0
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("version", "", "Print the localdns, CoreDNS and Go versions.", stderr)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	fmt.Fprintf(stdout, "localdns %s\nCoreDNS %s\n%s %s/%s\n", buildVersion(), daemon.ModuleVersion("github.com/coredns/coredns"), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return 0
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return version
}

func pluginsCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("plugins", "", "List the CoreDNS plugins compiled into localdns, in chain order.", stderr)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	for _, p := range plugins.List() {
		fmt.Fprintln(stdout, p)
	}
	return 0
}
