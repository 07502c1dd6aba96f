// Command provision bootstraps a bare-metal GPU node into the control plane:
// it writes the /etc/hosts override, enrolls against the current step-ca,
// installs the credentials as one unit, and declares the node done only after
// a real mTLS tasks/wait through the ingress succeeds.
//
// Everything lives in internal/cli; main only wires the process to it.
package main

import (
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/gpuaas/provision/internal/cli"
	"github.com/gpuaas/provision/internal/system"
)

func main() {
	// A run allocates a few megabytes and exits: at the default GOGC=100 the
	// heap's first goal (4 MB) forces one collection, about 8% of a cold
	// bootstrap's CPU, that frees nothing the process would reuse. 400 moves
	// the first goal to 16 MB, so a run ends before a collection, and a long
	// one (retries until bootstrap.deadline) is still collected at 5x its
	// live heap. GOGC in the environment still decides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// SIGTERM (systemd stopping the unit) and SIGINT cancel the run; cli.Main
	// makes sure the process then ends within cli.StopGrace with exit
	// 128+signal, whatever the run was blocked on.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	os.Exit(cli.MainWithHook(os.Args[1:], os.Stdout, os.Stderr, sigs, cli.StopGrace, crashHook))
}

// crashHook stays nil in the production binary; crashpoints.go (the crash
// tests' build, -tags crashpoints) sets it before main runs.
var crashHook system.Hook
