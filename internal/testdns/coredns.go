package testdns

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/coredns/caddy"
)

// StartCoreDNS starts CoreDNS in-process on corefile (the test package
// must have registered the dns server type and its plugins); the caller
// stops it with StopCoreDNS. It returns only once every server answers on
// UDP and TCP: caddy.Start returns before its serving goroutines have
// registered their miekg/dns servers with CoreDNS's dnsserver.Server, and a
// Stop that comes first misses them, so they serve on and Instance.Wait
// never returns (seen as a 20-minute test timeout).
func StartCoreDNS(t testing.TB, corefile string) *caddy.Instance {
	t.Helper()
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		t.Fatalf("start CoreDNS: %v\n%s", err, corefile)
	}
	for _, s := range inst.Servers() {
		for _, a := range []net.Addr{s.LocalAddr(), s.Addr()} {
			if a == nil {
				continue
			}
			if err := waitServing(a, 5*time.Second); err != nil {
				inst.Stop()
				t.Fatalf("CoreDNS on %s/%s: %v", a.Network(), a, err)
			}
		}
	}
	return inst
}

// StopCoreDNS runs inst's shutdown callbacks (final snapshots and the
// like), stops its servers and waits for them.
func StopCoreDNS(t testing.TB, inst *caddy.Instance) {
	t.Helper()
	err := errors.Join(append(inst.ShutdownCallbacks(), inst.Stop())...)
	inst.Wait()
	if err != nil {
		t.Errorf("stop CoreDNS: %v", err)
	}
}

// waitServing sends a message without a question until the server at a
// answers it. The server rejects it (FORMERR) before any plugin sees it, so
// the probe touches no upstream and no counter.
func waitServing(a net.Addr, within time.Duration) error {
	probe := make([]byte, 12) // header only: QDCOUNT 0
	binary.BigEndian.PutUint16(probe, 0x1d0c)
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		if last = exchangeRaw(a, probe); last == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return last
}

func exchangeRaw(a net.Addr, msg []byte) error {
	c, err := net.DialTimeout(a.Network(), a.String(), 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	wire := msg
	if a.Network() == "tcp" { // RFC 1035 4.2.2: a two-byte length first
		wire = append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
	}
	if _, err := c.Write(wire); err != nil {
		return err
	}
	buf := make([]byte, 512)
	_, err = c.Read(buf)
	return err
}
