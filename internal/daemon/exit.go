package daemon

import (
	"errors"
	"fmt"
)

// Exit codes of `localdns run`, one per cause, so that a node's provisioning
// (and an operator reading `systemctl status`) can tell why localdns did not
// start in Required mode. In Preferred mode every start failure exits 0 after
// tearing down, so the node keeps its central DNS.
const (
	ExitOK        = 0 // served and stopped cleanly; Disabled; Preferred fallback
	ExitFailure   = 1 // anything not listed below
	ExitUsage     = 2 // bad command line
	ExitConfig    = 3 // the profile or Corefile is invalid
	ExitUpstreams = 4 // no upstream could be discovered (vnetDNS: auto)
	ExitNetwork   = 5 // link or addresses could not be set up (e.g. no CAP_NET_ADMIN)
	ExitListen    = 6 // a listener could not bind (e.g. port 53 taken)
	ExitProbe     = 7 // a listener did not answer its self-probe
	ExitRules     = 8 // the conntrack bypass could not be installed (nftables)
	ExitHostDNS   = 9 // the host resolver could not be pointed at the node listener
)

// StartError is a failed start step with its exit code.
type StartError struct {
	Step string
	Code int
	Err  error
}

func (e *StartError) Error() string { return fmt.Sprintf("%s: %v", e.Step, e.Err) }
func (e *StartError) Unwrap() error { return e.Err }

func stepErr(step string, code int, err error) error {
	if err == nil {
		return nil
	}
	return &StartError{Step: step, Code: code, Err: err}
}

// ExitCode maps an error from Run to the process exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var se *StartError
	if errors.As(err, &se) {
		return se.Code
	}
	return ExitFailure
}
