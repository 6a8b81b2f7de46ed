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
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/localdns/localdns/internal/config"
	"github.com/localdns/localdns/internal/daemon"
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
	err := daemon.Run(ctx, daemon.Options{ConfigPath: *cfgPath, CorefilePath: *corePath, Logger: logger})
	if err != nil {
		logger.Error("localdns failed", "err", err)
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
	fmt.Fprintf(stdout, "localdns %s\nCoreDNS %s\n%s %s/%s\n", buildVersion(), moduleVersion("github.com/coredns/coredns"), runtime.Version(), runtime.GOOS, runtime.GOARCH)
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

// moduleVersion reads a dependency's version from the build info (importing
// coremain for its version constant would run its flag and server setup).
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				return strings.TrimPrefix(m.Version, "v")
			}
		}
	}
	return "unknown"
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
