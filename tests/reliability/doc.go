// Package reliability proves, with the real provision binary against the
// real in-process control plane (tests/controlplane: step-ca and the node
// API on loopback), the guarantees a first-boot provisioner running as root
// must keep: a SIGKILL at any instant leaves the hosts file old-or-new and
// the key matching its certificate; a burnt one-time token is named as such;
// transient faults are retried with capped full jitter and permanent ones
// stop at once; bad input is refused with a line naming it and without
// changing anything on disk; the token never reaches a log or a file; two
// runs at once do not corrupt each other.
//
// Why the binary and not cli.Run: a crash test has to kill a process, and the
// exit code, the last line printed and the files left behind are what
// cloud-init, systemd and an operator actually see. TestMain builds the
// binary once with -tags crashpoints (cmd/provision/crashpoints.go), whose
// only addition is that PROVISION_CRASH_AT=<step> makes the process SIGKILL
// itself at that hook step.
//
// Tests that need a mount namespace (bind-mounted /etc/hosts, read-only
// state_dir, full disk) run the binary under `unshare -m`; without unshare or
// the privilege to use it they skip loudly, and fail when CI=true.
//
// Every test prints its counts with t.Logf and a one-line summary such as
// "crash-consistency: 312 kills, 0 violations". RELIABILITY_KILLS sets the
// number of randomised kill attempts of the crash test (default 300).
package reliability
