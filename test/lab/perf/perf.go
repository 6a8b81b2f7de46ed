// Package perf runs dnsperf and turns its per-query verbose output into the
// numbers the lab reports: latency percentiles, success rate and losses.
//
// dnsperf writes its output to a file that is parsed once dnsperf has
// exited: reading and parsing 10,000 lines a second while it runs would put
// the parser on the load side's CPU during the measurement.
//
// dnsperf's own summary gives only the mean and the maximum latency; its -v
// mode prints one line per query ("> NOERROR name A 0.000661", or
// "> T name A" for a query that timed out), from which the percentiles are
// computed here with the nearest-rank method. Success is judged per query
// against the rcode the workload expects for that name, so a stale NXDOMAIN
// for a service or a SERVFAIL during an outage counts as a failure, not only
// a timeout.
package perf

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Result is what one or more dnsperf runs measured.
type Result struct {
	Sent      int            // queries dnsperf sent
	Answered  int            // responses received
	Lost      int            // queries that timed out ("> T")
	Succeeded int            // answered with the expected rcode
	Rcodes    map[string]int // responses by rcode name
	Latencies []time.Duration
	Elapsed   time.Duration // wall time of the run(s), for QPS
	// CPU is the CPU time (user + system) the dnsperf processes used: the
	// client's own cost, to show it was not the bottleneck.
	CPU time.Duration
	// Failures are the first MaxFailures per-query lines that failed
	// (timed out or answered with an unexpected rcode), for diagnosis.
	Failures []string
}

// MaxFailures bounds Result.Failures.
const MaxFailures = 200

// Expect maps a query name to the rcode a correct answer has.
type Expect func(qname string) int

// Parse reads dnsperf -v output. Lines that are not per-query lines are
// ignored (dnsperf mixes status and statistics lines into the same stream).
func Parse(r io.Reader, expect Expect) (*Result, error) {
	res := &Result{Rcodes: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "> ") {
			continue
		}
		f := strings.Fields(line[2:])
		if len(f) == 0 {
			continue
		}
		res.Sent++
		if f[0] == "T" {
			res.Lost++
			res.fail(line)
			continue
		}
		if len(f) < 4 {
			return nil, fmt.Errorf("dnsperf line %q: want rcode, name, type and latency", line)
		}
		lat, err := strconv.ParseFloat(f[3], 64)
		if err != nil {
			return nil, fmt.Errorf("dnsperf line %q: latency: %w", line, err)
		}
		res.Answered++
		res.Rcodes[f[0]]++
		res.Latencies = append(res.Latencies, time.Duration(lat*float64(time.Second)))
		if rc, ok := dns.StringToRcode[f[0]]; ok && (expect == nil || rc == expect(f[1])) {
			res.Succeeded++
		} else {
			res.fail(line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read dnsperf output: %w", err)
	}
	return res, nil
}

func (r *Result) fail(line string) {
	if len(r.Failures) < MaxFailures {
		r.Failures = append(r.Failures, line)
	}
}

// Merge adds o's counts and latencies to r.
func (r *Result) Merge(o *Result) {
	if r.Rcodes == nil {
		r.Rcodes = map[string]int{}
	}
	r.Sent += o.Sent
	r.Answered += o.Answered
	r.Lost += o.Lost
	r.Succeeded += o.Succeeded
	for k, v := range o.Rcodes {
		r.Rcodes[k] += v
	}
	r.Latencies = append(r.Latencies, o.Latencies...)
	r.Failures = append(r.Failures, o.Failures[:min(len(o.Failures), max(0, MaxFailures-len(r.Failures)))]...)
	r.Elapsed = max(r.Elapsed, o.Elapsed)
	r.CPU += o.CPU
}

// SuccessRate is the share of sent queries answered with the expected rcode.
func (r *Result) SuccessRate() float64 {
	if r.Sent == 0 {
		return 0
	}
	return float64(r.Succeeded) / float64(r.Sent)
}

// PercentileSent returns the nearest-rank p-th percentile over every query
// sent, a lost query counting as taking timeout (it took at least that):
// percentiles of the answered queries alone would hide the losses.
func (r *Result) PercentileSent(p float64, timeout time.Duration) time.Duration {
	n := len(r.Latencies) + r.Lost
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p*float64(n)/100 - 1e-9))
	rank = min(max(rank, 1), n)
	if rank > len(r.Latencies) {
		return timeout
	}
	if !slices.IsSorted(r.Latencies) {
		slices.Sort(r.Latencies)
	}
	return r.Latencies[rank-1]
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of the
// answered queries' latencies, or 0 with none.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	if !slices.IsSorted(r.Latencies) {
		slices.Sort(r.Latencies)
	}
	rank := int(math.Ceil(p*float64(len(r.Latencies))/100 - 1e-9))
	rank = min(max(rank, 1), len(r.Latencies))
	return r.Latencies[rank-1]
}

// Run describes one dnsperf invocation.
type Run struct {
	Netns    string        // network namespace to run in ("" = current)
	Server   string        // address to query
	Port     string        // -p; "" for 53
	Data     string        // data file
	QPS      int           // -Q
	Duration time.Duration // -l; 0 with Once
	Once     bool          // -n 1: one pass through the file
	Clients  int           // -c: sockets
	Outstand int           // -q: max outstanding queries
	Timeout  time.Duration // -t
	BufferKB int           // -b: socket buffers, so a briefly starved dnsperf does not drop answers
	Nice     int           // run under nice(1) with this adjustment (0: not)
	CPUs     string        // run under taskset(1) on these CPUs ("": anywhere)
	// Output is the file dnsperf's per-query output goes to (created or
	// truncated); "" writes it to a temporary file removed after parsing.
	Output string
}

// Args returns the command line (ip netns exec ... dnsperf ...).
func (r Run) Args() []string {
	var args []string
	if r.Nice != 0 {
		args = append(args, "nice", "-n", strconv.Itoa(r.Nice))
	}
	if r.Netns != "" {
		args = append(args, "ip", "netns", "exec", r.Netns)
	}
	if r.CPUs != "" {
		// Innermost, so dnsperf itself is pinned (taskset execs it).
		args = append(args, "taskset", "-c", r.CPUs)
	}
	args = append(args, "dnsperf", "-s", r.Server, "-d", r.Data, "-v")
	if r.Port != "" {
		args = append(args, "-p", r.Port)
	}
	if r.QPS > 0 {
		args = append(args, "-Q", strconv.Itoa(r.QPS))
	}
	if r.Once {
		args = append(args, "-n", "1")
	} else {
		args = append(args, "-l", strconv.FormatFloat(r.Duration.Seconds(), 'f', -1, 64))
	}
	if r.Clients > 0 {
		args = append(args, "-c", strconv.Itoa(r.Clients))
	}
	if r.Outstand > 0 {
		args = append(args, "-q", strconv.Itoa(r.Outstand))
	}
	if r.Timeout > 0 {
		args = append(args, "-t", strconv.Itoa(int(math.Ceil(r.Timeout.Seconds()))))
	}
	if r.BufferKB > 0 {
		args = append(args, "-b", strconv.Itoa(r.BufferKB))
	}
	return args
}

// Start launches dnsperf; Wait on the returned handle parses its output.
func (r Run) Start(expect Expect) (*Handle, error) {
	args := r.Args()
	var out *os.File
	var err error
	if r.Output != "" {
		out, err = os.Create(r.Output)
	} else {
		out, err = os.CreateTemp("", "dnsperf-*.out")
	}
	if err != nil {
		return nil, fmt.Errorf("dnsperf output file: %w", err)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = out
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start dnsperf: %w", err)
	}
	h := &Handle{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		defer out.Close()
		if r.Output == "" {
			defer os.Remove(out.Name())
		}
		werr := cmd.Wait()
		elapsed := time.Since(start)
		if werr != nil {
			h.err = fmt.Errorf("dnsperf %s: %w: %s", strings.Join(args, " "), werr, strings.TrimSpace(stderr.String()))
		}
		if _, err := out.Seek(0, io.SeekStart); err != nil {
			h.err = errors.Join(h.err, fmt.Errorf("dnsperf output: %w", err))
			return
		}
		res, err := Parse(bufio.NewReaderSize(out, 1<<20), expect)
		if err != nil {
			h.err = errors.Join(h.err, err)
			return
		}
		h.res = res
		res.Elapsed = elapsed
		// nice, ip netns exec and taskset exec: the process is dnsperf.
		if ps := cmd.ProcessState; ps != nil {
			res.CPU = ps.UserTime() + ps.SystemTime()
		}
		if res.Sent == 0 && h.err == nil {
			h.err = fmt.Errorf("dnsperf %s sent nothing: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
		}
	}()
	return h, nil
}

// Handle is a running dnsperf.
type Handle struct {
	cmd  *exec.Cmd
	done chan struct{}
	res  *Result
	err  error
}

// Wait waits for dnsperf to finish and returns what it measured.
func (h *Handle) Wait() (*Result, error) {
	<-h.done
	return h.res, h.err
}

// RunAll starts the runs together and merges their results.
func RunAll(runs []Run, expect Expect) (*Result, error) {
	var hs []*Handle
	for _, r := range runs {
		h, err := r.Start(expect)
		if err != nil {
			for _, h := range hs {
				h.cmd.Process.Kill()
				h.Wait()
			}
			return nil, err
		}
		hs = append(hs, h)
	}
	total := &Result{Rcodes: map[string]int{}}
	var firstErr error
	for _, h := range hs {
		res, err := h.Wait()
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if res != nil {
			total.Merge(res)
		}
	}
	return total, firstErr
}
