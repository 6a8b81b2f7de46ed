package main

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

// inNetns runs f on an OS thread switched into the named network namespace:
// sockets f opens belong to that namespace (and keep belonging to it). f must
// open them itself, not in other goroutines. This spares the lab a process
// per probe or metrics read (ip netns exec), which on a busy machine costs
// more than the measurement.
func inNetns(name string, f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine instead of
		// serving others in the wrong namespace.
		return fmt.Errorf("leave netns %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// answer is one probe reply: its rcode and the server's NSID ("-" if none).
type answer struct {
	rcode string
	nsid  string
}

// probeDNS sends n A queries for name to server, each from a fresh socket (a
// new conntrack flow), asking for NSID.
func probeDNS(server, name string, n int, timeout time.Duration) ([]answer, error) {
	var out []answer
	for range n {
		conn, err := net.Dial("udp", server)
		if err != nil {
			return out, err
		}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(1232)
		o.Option = append(o.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
		m.Extra = append(m.Extra, o)
		c := &dns.Client{Timeout: timeout}
		r, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn})
		conn.Close()
		if err != nil {
			return out, fmt.Errorf("query %s for %s: %w", server, name, err)
		}
		a := answer{rcode: dns.RcodeToString[r.Rcode], nsid: "-"}
		if opt := r.IsEdns0(); opt != nil {
			for _, e := range opt.Option {
				if ns, ok := e.(*dns.EDNS0_NSID); ok {
					if b, err := hex.DecodeString(ns.Nsid); err == nil {
						a.nsid = string(b)
					}
				}
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// probeIn runs probeDNS from inside netns.
func probeIn(netns, server, name string, n int, timeout time.Duration) ([]answer, error) {
	var out []answer
	err := inNetns(netns, func() error {
		var err error
		out, err = probeDNS(server, name, n, timeout)
		return err
	})
	return out, err
}

// fetchIn GETs an HTTP URL path from host:port inside netns.
func fetchIn(netns, hostport, path string) (string, error) {
	var body string
	err := inNetns(netns, func() error {
		conn, err := net.DialTimeout("tcp", hostport, 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, hostport)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s%s: %s", hostport, path, resp.Status)
		}
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		return err
	})
	return body, err
}
