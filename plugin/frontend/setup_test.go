package frontend

import (
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

func TestSetupErrors(t *testing.T) {
	for _, c := range []struct {
		corefile, want string
	}{
		{"frontend extra", "Wrong argument count"},
	} {
		ctl := caddy.NewTestController("dns", c.corefile)
		err := setup(ctl)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.corefile, err, c.want)
		}
	}
}

func TestSetupRefusesWildcard(t *testing.T) {
	ctl := caddy.NewTestController("dns", "frontend")
	dnsserver.GetConfig(ctl).ListenHosts = []string{""}
	if err := setup(ctl); err == nil || !strings.Contains(err.Error(), "wildcard") {
		t.Fatalf("wildcard bind: error %v", err)
	}
}

func TestSetupParksThePort(t *testing.T) {
	ctl := caddy.NewTestController("dns", "frontend")
	cfg := dnsserver.GetConfig(ctl)
	cfg.ListenHosts, cfg.Port = []string{"127.0.0.1"}, "53"
	if err := setup(ctl); err != nil {
		t.Fatal(err)
	}
	if cfg.Port != "53" {
		t.Fatalf("port %q right after setup, want the real one until all setups ran", cfg.Port)
	}
	s, _ := ctl.Get(Key{}).(*Servers)
	if s == nil || s.parked[cfg] != "53" {
		t.Fatalf("real port not recorded: %+v", s)
	}
	if err := park(ctl.Context()); err != nil || cfg.Port != "0" {
		t.Fatalf("after the parsing callback: port %q, %v; want parked on 0", cfg.Port, err)
	}
	if _, err := s.ByAddress(); err == nil {
		t.Fatal("servers reported before the instance started")
	}
}
