package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/localdns/localdns/internal/daemon"
	"github.com/localdns/localdns/plugin/clientbudget"
)

func topCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("top", "[--config FILE] [--json] [-n N] [--pods FILE|URL]", strings.TrimSpace(`
Show who is asking: the busiest clients over the last minute by queries,
cache misses, NXDOMAIN answers and queries refused for being over the
client budget, and the most asked and most missed names. A client is a pod's
IP (localdns sees each pod's own address). With --pods, each IP is shown
with its pod's namespace/name, from a Kubernetes pod list: a file (e.g. the
output of 'kubectl get pods -o json --field-selector spec.nodeName=NODE') or
an http:// URL serving one (kubelet's /pods, where its read-only port is
enabled). It asks the daemon's health endpoint (the profile's "health"
address) for /status. Exit 0, or 3 when the daemon does not answer.`), stderr)
	cfgPath := fs.String("config", "", "profile `FILE` (default: the node profile, or the laptop profile)")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	n := fs.Int("n", 10, "show at most `N` clients and names of each kind")
	pods := fs.String("pods", "", "pod list `FILE or URL` to name each client's pod")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	p, _, err := profileFor(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "localdns top: %v\n", err)
		return daemon.ExitConfig
	}
	if p.Health == "" {
		fmt.Fprintln(stderr, "localdns top: the profile sets no health address")
		return daemon.ExitConfig
	}
	r, err := fetchReport("http://" + p.Health + "/status")
	if err != nil {
		fmt.Fprintf(stderr, "localdns top: daemon not answering on %s: %v\n", p.Health, err)
		return 3
	}
	if r.Top == nil {
		fmt.Fprintln(stderr, "localdns top: the daemon reports no client accounting (an older localdns?)")
		return 1
	}
	top := *r.Top
	top.Clients = top.Clients[:min(len(top.Clients), *n)]
	top.Asked = top.Asked[:min(len(top.Asked), *n)]
	top.Missed = top.Missed[:min(len(top.Missed), *n)]
	if *pods != "" {
		names, err := loadPods(*pods)
		if err != nil {
			fmt.Fprintf(stderr, "localdns top: pod list: %v\n", err)
			return 1
		}
		for i, c := range top.Clients {
			if a, err := netip.ParseAddr(c.Client); err == nil {
				top.Clients[i].Pod = names[a]
			}
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(top)
		return 0
	}
	printTop(stdout, top)
	return 0
}

func printTop(w io.Writer, t clientbudget.Top) {
	budget := "no per-client limit"
	if t.QueriesPerSecond > 0 {
		budget = fmt.Sprintf("budget %g upstream queries/s per client, burst %d", t.QueriesPerSecond, t.Burst)
	}
	fmt.Fprintf(w, "localdns top — last %d s: %d queries; %s; %d cache refreshes since start\n\n", t.WindowSeconds, t.Queries, budget, t.Refreshes)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tPOD\tQUERIES\tMISSES\tNXDOMAIN\tLIMITED")
	for _, c := range t.Clients {
		pod := c.Pod
		if pod == "" {
			pod = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", c.Client, pod, c.Queries, c.Misses, c.NXDOMAIN, c.Limited)
	}
	tw.Flush()
	for _, l := range []struct {
		title string
		names []clientbudget.NameStat
	}{{"MOST ASKED", t.Asked}, {"MOST MISSED", t.Missed}} {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "%s\tCOUNT\n", l.title)
		for _, n := range l.names {
			fmt.Fprintf(tw, "%s\t%d\n", n.Name, n.Count)
		}
		tw.Flush()
	}
}

// podList is the part of a Kubernetes v1 PodList that names a pod's IPs.
type podList struct {
	Items []struct {
		Metadata struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			HostNetwork bool `json:"hostNetwork"`
		} `json:"spec"`
		Status struct {
			PodIP  string `json:"podIP"`
			PodIPs []struct {
				IP string `json:"ip"`
			} `json:"podIPs"`
		} `json:"status"`
	} `json:"items"`
}

// loadPods reads a pod list from a file or an http:// URL and maps each
// pod IP to "namespace/name". Host-network pods are left out: they share
// the node's address, which names no single pod.
func loadPods(src string) (map[netip.Addr]string, error) {
	var body []byte
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: %s", src, resp.Status)
		}
		if body, err = io.ReadAll(io.LimitReader(resp.Body, 64<<20)); err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
	} else {
		var err error
		if body, err = os.ReadFile(src); err != nil {
			return nil, err
		}
	}
	var pl podList
	if err := json.Unmarshal(body, &pl); err != nil {
		return nil, fmt.Errorf("%s: not a pod list: %w", src, err)
	}
	names := map[netip.Addr]string{}
	for _, p := range pl.Items {
		if p.Spec.HostNetwork {
			continue
		}
		ips := []string{p.Status.PodIP}
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		for _, ip := range ips {
			if a, err := netip.ParseAddr(ip); err == nil {
				names[a.Unmap()] = p.Metadata.Namespace + "/" + p.Metadata.Name
			}
		}
	}
	return names, nil
}
