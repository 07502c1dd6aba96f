// Command lab is the README's demo: it starts a real control plane on
// loopback (step-ca in-process and a node API over mTLS), bootstraps a
// throwaway node root with the real provision CLI, then breaks the control
// plane the incident's way (the ingress trusts the wrong CA) and shows that
// verify fails and names the layer, and passes again once restored.
//
//	go run ./tests/lab            # the demo; exit 0 if every step behaved
//	go run ./tests/lab --keep     # keep the node root and print its path
//	go run ./tests/lab --serve    # only run the control plane, for provision by hand
//
// Nothing leaves loopback, nothing is written outside temporary directories,
// and no sudo is needed: provision resolves the control-plane hostnames
// through the hosts file under --root.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/gpuaas/provision/internal/cli"
	"github.com/gpuaas/provision/tests/controlplane"
)

const nodeID = "gpu-0042"

func main() {
	os.Exit(run())
}

func run() int {
	keep := flag.Bool("keep", false, "keep the node root directory and print its path")
	serve := flag.Bool("serve", false, "start the control plane, print the config path and wait for Ctrl-C")
	logs := flag.Bool("logs", false, "stream provision's structured log (stderr) instead of showing it only for a step that misbehaved")
	flag.Parse()

	// step-ca announces itself through the standard logger; the demo's
	// output is provision's.
	log.SetOutput(io.Discard)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cp, err := controlplane.New(controlplane.Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "lab: starting the control plane: %v\n", err)
		return 1
	}
	defer cp.Close()

	root, err := os.MkdirTemp("", "provision-lab-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "lab: %v\n", err)
		return 1
	}
	if *keep || *serve {
		defer fmt.Printf("\nnode root kept: %s\n", root)
	} else {
		defer os.RemoveAll(root)
	}
	files, err := cp.PrepareNode(root, nodeID)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lab: writing the node config: %v\n", err)
		return 1
	}

	if *serve {
		return serveUntilInterrupted(ctx, cp, files)
	}
	return demo(ctx, cp, files, os.Stdout, os.Stderr, *logs)
}

type step struct {
	banner string
	before func()
	args   []string
	ok     func(code int) bool
	expect string
}

// demo runs the three steps and returns 0 if each behaved as expected.
// provision's report goes to out; its log goes to errOut live when
// streamLogs, else only for a step that misbehaved.
func demo(ctx context.Context, cp *controlplane.ControlPlane, files controlplane.NodeFiles, out, errOut io.Writer, streamLogs bool) int {
	fmt.Fprintf(out, "control plane: step-ca %s (root %s…), node API %s\n", cp.CA.URL(), cp.CA.Fingerprint()[:16], cp.API.URL())
	fmt.Fprintf(out, "node root:     %s\n", files.Root)
	common := []string{"--config", files.ConfigArg, "--root", files.Root}
	steps := []step{
		{
			banner: "1. bootstrap a fresh node against a healthy control plane",
			args:   append([]string{"bootstrap"}, common...),
			ok:     func(c int) bool { return c == 0 }, expect: "exit 0",
		},
		{
			banner: "2. break the control plane the incident's way: the ingress trusts the wrong CA; verify",
			before: func() { cp.SetClientCAMode(controlplane.ClientCAUnrelated) },
			args:   append([]string{"verify"}, common...),
			ok:     func(c int) bool { return c != 0 }, expect: "a non-zero exit (16 = tls-client-auth)",
		},
		{
			banner: "3. restore the ingress's client CA; verify again",
			before: func() { cp.SetClientCAMode(controlplane.ClientCAStep) },
			args:   append([]string{"verify"}, common...),
			ok:     func(c int) bool { return c == 0 }, expect: "exit 0",
		},
	}
	failed := 0
	for _, s := range steps {
		if ctx.Err() != nil {
			fmt.Fprintln(out, "interrupted")
			return 1
		}
		fmt.Fprintf(out, "\n=== %s\n$ provision %s\n", s.banner, strings.Join(s.args, " "))
		if s.before != nil {
			s.before()
		}
		var logBuf bytes.Buffer
		stepErr := io.Writer(&logBuf)
		if streamLogs {
			stepErr = errOut
		}
		code := cli.Run(ctx, s.args, out, stepErr)
		verdict := "as expected"
		if !s.ok(code) {
			verdict = "NOT as expected"
			failed++
			if logBuf.Len() > 0 {
				fmt.Fprintf(errOut, "--- provision's log for this step:\n%s", logBuf.Bytes())
			}
		}
		fmt.Fprintf(out, "--- exit code %d (expected %s): %s\n", code, s.expect, verdict)
	}
	if failed > 0 {
		fmt.Fprintf(out, "\nlab: %d of %d steps did not behave as expected\n", failed, len(steps))
		return 1
	}
	fmt.Fprintln(out, "\nlab: every step behaved as expected")
	return 0
}

func serveUntilInterrupted(ctx context.Context, cp *controlplane.ControlPlane, files controlplane.NodeFiles) int {
	fmt.Printf(`control plane running on loopback
  step-ca:   %s (listening on %s)
  root fingerprint: %s
  node API:  %s (listening on %s)
  node root: %s
  config:    %s (pass --config %s --root %s)
  token:     %s (one use)

run provision against it, for example:
  go run ./cmd/provision bootstrap --config %s --root %s
  go run ./cmd/provision verify    --config %s --root %s

commands on stdin: wrong-ca | eof | ok | rotate | token | quit   (Ctrl-C stops)
`, cp.CA.URL(), cp.CA.Addr(), cp.CA.Fingerprint(), cp.API.URL(), cp.API.Addr(), files.Root,
		files.ConfigPath, files.ConfigArg, files.Root, files.TokenPath,
		files.ConfigArg, files.Root, files.ConfigArg, files.Root)

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- strings.TrimSpace(sc.Text())
		}
		close(lines)
	}()
	for {
		select {
		case <-ctx.Done():
			fmt.Println("\nstopping")
			return 0
		case line, ok := <-lines:
			if !ok {
				lines = nil // stdin closed: keep serving until interrupted
				continue
			}
			if line == "quit" {
				return 0
			}
			fmt.Println(command(cp, files, line))
		}
	}
}

func command(cp *controlplane.ControlPlane, files controlplane.NodeFiles, cmd string) string {
	switch cmd {
	case "":
		return ""
	case "wrong-ca":
		cp.SetClientCAMode(controlplane.ClientCAUnrelated)
		return "node API now trusts an unrelated CA (expect: unknown certificate authority)"
	case "eof":
		cp.SetClientCAMode(controlplane.ClientCABroken)
		return "node API now closes hostname connections after the ClientHello (expect: EOF)"
	case "ok":
		cp.SetClientCAMode(controlplane.ClientCAStep)
		return "node API restored: trusts the current step-ca root"
	case "rotate":
		if err := cp.RotateCA(); err != nil {
			return "rotate: " + err.Error()
		}
		cfg := cp.NodeConfig(nodeID)
		if _, err := controlplane.WriteNode(files.Root, cfg, ""); err != nil {
			return "rotate: rewriting config: " + err.Error()
		}
		return "step-ca re-initialised: new root " + cp.CA.Fingerprint() + " written to the config; node certificates are now stale (run 'token' before bootstrap)"
	case "token":
		tok, err := cp.Token(nodeID)
		if err != nil {
			return "token: " + err.Error()
		}
		if err := controlplane.WriteToken(files.Root, controlplane.DefaultTokenFile, tok); err != nil {
			return "token: " + err.Error()
		}
		return "fresh one-time token written to " + files.TokenPath
	}
	return "unknown command " + fmt.Sprintf("%q", cmd) + "; try wrong-ca, eof, ok, rotate, token, quit"
}
