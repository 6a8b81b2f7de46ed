// Command corefilerun serves a Corefile with localdns's CoreDNS build (the
// plugins and directive order of internal/plugins) through plain caddy.Start,
// without the rest of the daemon.
//
// The benchmark uses it when bin/localdns is not built, and as a third
// engine ("nodecache-caddy") that shows what the nodecache plugin does inside
// CoreDNS's own server, separately from localdns's socket front-end.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/coredns/caddy"

	_ "github.com/localdns/localdns/internal/plugins"
)

func main() {
	// Not -conf: coremain, linked in through the plugins, defines that one.
	conf := flag.String("corefile", "", "Corefile to serve")
	flag.Parse()
	if err := run(*conf); err != nil {
		fmt.Fprintln(os.Stderr, "corefilerun:", err)
		os.Exit(1)
	}
}

func run(conf string) error {
	if conf == "" {
		return fmt.Errorf("-corefile is required")
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		return fmt.Errorf("read Corefile: %w", err)
	}
	caddy.Quiet = true
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: b, Filepath: conf, ServerTypeName: "dns"})
	if err != nil {
		return fmt.Errorf("start CoreDNS: %w", err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	for _, err := range inst.ShutdownCallbacks() {
		fmt.Fprintln(os.Stderr, "corefilerun: shutdown:", err)
	}
	return inst.Stop()
}
