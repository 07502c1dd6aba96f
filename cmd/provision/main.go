// Command provision bootstraps a bare-metal GPU node into the control plane:
// it writes the /etc/hosts override, enrolls against the current step-ca,
// installs the credentials as one unit, and declares the node done only after
// a real mTLS tasks/wait through the ingress succeeds.
//
// Everything lives in internal/cli; main only wires the process to it.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/gpuaas/provision/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
