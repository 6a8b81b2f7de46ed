// Command lab reproduces the seed experiment of localdns (centralized CoreDNS
// against a node-local cache, at 10k QPS) on one machine, in network
// namespaces, and checks the result against the bars of issue #7.
//
//	lab run [-short] [-out DIR]   build the lab, run every scenario, write the report
//	lab clean                     remove a lab left behind by a killed run
//
// The other subcommands are the lab's own processes, started inside its
// namespaces by `lab run`:
//
//	lab delayproxy  the network hop in front of a CoreDNS pod
//	lab extdns      the external ("Azure DNS") resolver
//	lab sockact     holds the listener sockets and restarts localdns on them
//	lab fetch       prints an HTTP resource (metrics inside a namespace)
//	lab probe       queries a server, optionally asking for NSID
//
// Root is required: the lab creates network namespaces and nftables rules.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/localdns/localdns/test/lab/delayproxy"
	"github.com/localdns/localdns/test/lab/extdns"
	"github.com/localdns/localdns/test/lab/sockact"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"run":        runCmd,
		"clean":      cleanCmd,
		"delayproxy": delayProxyCmd,
		"extdns":     extDNSCmd,
		"sockact":    sockactCmd,
		"fetch":      fetchCmd,
		"probe":      probeCmd,
	}
	f, ok := cmds[os.Args[1]]
	if !ok {
		usage()
		os.Exit(2)
	}
	if err := f(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "lab %s: %v\n", os.Args[1], err)
		var ec exitCode
		if errors.As(err, &ec) {
			os.Exit(int(ec))
		}
		os.Exit(1)
	}
}

// exitCode lets a subcommand choose its exit status.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func usage() {
	fmt.Fprintln(os.Stderr, "usage: lab run [-short] [-out DIR] | lab clean | lab delayproxy|extdns|sockact|fetch|probe [flags]")
}

// waitSignal blocks until SIGTERM or SIGINT.
func waitSignal() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
}

func delayProxyCmd(args []string) error {
	fs := flag.NewFlagSet("delayproxy", flag.ContinueOnError)
	listen := fs.String("listen", "", "UDP address to accept queries on")
	to := fs.String("to", "", "DNS server to pass them to")
	base := fs.Duration("base", time.Millisecond, "fixed delay per query")
	jitter := fs.Duration("jitter", 0, "mean of the exponential delay added per query")
	sockets := fs.Int("sockets", 4, "upstream sockets")
	metrics := fs.String("metrics", "", "address to serve the actual hold on (/hold, JSON); empty: none")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		return err
	}
	// A large buffer: the proxy must not be where queries are dropped.
	if err := delayproxy.ForceReadBuffer(pc.(*net.UDPConn), 8<<20); err != nil {
		return err
	}
	p, err := delayproxy.Start(pc, *to, *sockets, delayproxy.Delay{Base: *base, Jitter: *jitter})
	if err != nil {
		return err
	}
	if *metrics != "" {
		mln, err := net.Listen("tcp", *metrics)
		if err != nil {
			p.Close()
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/hold", delayproxy.HoldHandler(p.HoldStats))
		go http.Serve(mln, mux)
	}
	waitSignal()
	p.Close()
	fmt.Fprintf(os.Stderr, "delayproxy %s: %d queries passed on, %d dropped; %s\n", *listen, p.Queries(), p.Dropped(), p.HoldStats())
	return nil
}

func extDNSCmd(args []string) error {
	fs := flag.NewFlagSet("extdns", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to serve DNS on (UDP and TCP)")
	metrics := fs.String("metrics", "127.0.0.1:9100", "address to serve the query counter on (and the actual delay at /hold, JSON)")
	ttl := fs.Uint("ttl", 60, "TTL of the answers")
	base := fs.Duration("base", 0, "fixed delay per query")
	jitter := fs.Duration("jitter", 0, "mean of the exponential delay added per query")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := extdns.New(uint32(*ttl), delayproxy.Delay{Base: *base, Jitter: *jitter})
	if err != nil {
		return err
	}
	defer s.Close()
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mln, err := net.Listen("tcp", *metrics)
	if err != nil {
		return err
	}
	udp := &dns.Server{PacketConn: pc, Handler: s}
	tcp := &dns.Server{Listener: ln, Handler: s}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	go http.Serve(mln, s)
	waitSignal()
	udp.Shutdown()
	tcp.Shutdown()
	fmt.Fprintf(os.Stderr, "extdns %s: %d queries; %s\n", *listen, s.Queries(), s.HoldStats())
	return nil
}

// sockactCmd holds the sockets and runs the command after "--" on them,
// restarting it on SIGHUP and stopping it on SIGTERM. If the service exits
// on its own, it is started again as systemd would (the sockets still get
// traffic), up to systemd's default start limit; past that, or without held
// sockets, sockact exits 3 so the lab sees it.
func sockactCmd(args []string) error {
	fs := flag.NewFlagSet("sockact", flag.ContinueOnError)
	var specs []sockact.Spec
	fs.Func("listen", "socket to hold, udp:ADDR:PORT or tcp:ADDR:PORT (repeat)", func(s string) error {
		sp, err := sockact.ParseSpec(s)
		specs = append(specs, sp)
		return err
	})
	rcvbuf := fs.Int("rcvbuf", 4<<20, "UDP receive buffer in bytes (ReceiveBuffer=)")
	stopTimeout := fs.Duration("stop-timeout", 10*time.Second, "SIGKILL the service after this long (TimeoutStopSec=)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := sockact.New(specs, *rcvbuf, fs.Args())
	if err != nil {
		return err
	}
	defer s.Close()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	if err := s.Start(); err != nil {
		return err
	}
	var starts []time.Time
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				start := time.Now()
				if err := s.Restart(*stopTimeout); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "sockact: restarted (stop took %v), pid %d\n", time.Since(start).Round(time.Millisecond), s.PID())
				continue
			}
			return s.Stop(*stopTimeout)
		case <-s.Exited():
			// systemd starts a socket-activated service again when traffic
			// arrives on its sockets (and with Restart=on-failure), until
			// the start limit (5 starts in 10 s by default) is hit.
			now := time.Now()
			starts = append(starts, now)
			for len(starts) > 0 && now.Sub(starts[0]) > 10*time.Second {
				starts = starts[1:]
			}
			if len(specs) == 0 || len(starts) > 5 {
				fmt.Fprintln(os.Stderr, "sockact: service exited on its own; giving up (start limit)")
				return exitCode(3)
			}
			fmt.Fprintln(os.Stderr, "sockact: service exited on its own; starting it again (socket activation)")
			s.Stop(time.Second)                // already exited: only clears it
			time.Sleep(100 * time.Millisecond) // systemd's RestartSec default
			if err := s.Start(); err != nil {
				return err
			}
		}
	}
}

func fetchCmd(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: lab fetch URL")
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", args[0], resp.Status)
	}
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

// probeCmd sends -n queries, each from a fresh socket (a new conntrack flow),
// and prints one line per answer: rcode and NSID (or "-").
func probeCmd(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	server := fs.String("server", "", "server address (host:port)")
	name := fs.String("name", "", "query name")
	n := fs.Int("n", 1, "queries")
	timeout := fs.Duration("timeout", time.Second, "per-query timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	as, err := probeDNS(*server, *name, *n, *timeout)
	for _, a := range as {
		fmt.Printf("%s %s\n", a.rcode, a.nsid)
	}
	return err
}
