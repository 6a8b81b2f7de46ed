package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The comparison is only fair if the engines' server blocks differ in the
// cache directive (and localdns's frontend) and nothing else.
func TestCorefilesDifferOnlyInCache(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"stock", "localdns", "corerun"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("BENCH_STOCK", filepath.Join(dir, "stock"))
	t.Setenv("BENCH_LOCALDNS", filepath.Join(dir, "localdns"))
	t.Setenv("BENCH_CORERUN", filepath.Join(dir, "corerun"))
	cfg, err := envConfig()
	if err != nil {
		t.Fatal(err)
	}
	stock, err := cfg.engine("stock")
	if err != nil {
		t.Fatal(err)
	}
	local, err := cfg.engine(" localdns")
	if err != nil {
		t.Fatal(err)
	}
	if got := local.argv("C"); strings.Join(got, " ") != filepath.Join(dir, "localdns")+" run --corefile C" {
		t.Errorf("localdns command line %q", got)
	}

	a := corefile(5300, "127.0.0.1:5301", stock, "")
	b := corefile(5300, "127.0.0.1:5301", local, "")
	strip := func(s string, e engine) string {
		s = strings.Replace(s, "\t"+e.cache+"\n", "\tCACHE\n", 1)
		if e.extra != "" {
			s = strings.Replace(s, "\t"+e.extra+"\n", "", 1)
		}
		return s
	}
	if strip(a, stock) != strip(b, local) {
		t.Fatalf("Corefiles differ beyond the cache:\n%s\n---\n%s", a, b)
	}
	for _, want := range []string{".:5300 {", "bind 127.0.0.1", "forward . 127.0.0.1:5301"} {
		if !strings.Contains(a, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, a)
		}
	}
	if !strings.Contains(b, "nodecache {") || !strings.Contains(b, "frontend") || !strings.Contains(a, "\tcache\n") {
		t.Errorf("wrong cache directives:\n%s\n---\n%s", a, b)
	}
	for _, c := range []string{a, b} {
		if strings.Contains(c, "log") || strings.Contains(c, "errors") {
			t.Errorf("log or errors on the hot path:\n%s", c)
		}
	}
}

func TestLocaldnsFallsBackToCorefilerun(t *testing.T) {
	dir := t.TempDir()
	corerun := filepath.Join(dir, "corerun")
	if err := os.WriteFile(corerun, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BENCH_LOCALDNS", filepath.Join(dir, "missing"))
	t.Setenv("BENCH_CORERUN", corerun)
	cfg, err := envConfig()
	if err != nil {
		t.Fatal(err)
	}
	e, err := cfg.engine("localdns")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(e.argv("C"), " "); got != corerun+" -corefile C" || e.extra != "" {
		t.Fatalf("fallback engine: argv %q extra %q", got, e.extra)
	}
	if _, err := cfg.engine("unbound"); err == nil {
		t.Fatal("unknown engine accepted")
	}
}

func TestEnvConfigRejectsBadNumbers(t *testing.T) {
	t.Setenv("BENCH_ROUNDS", "zero")
	if _, err := envConfig(); err == nil {
		t.Fatal("BENCH_ROUNDS=zero accepted")
	}
}
