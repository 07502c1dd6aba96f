// Package testenv holds what the project's tests share about their
// environment: finding the real programs a test drives, a log buffer safe
// for concurrent writers, and a digest of a tree to prove a run changed
// nothing it did not create.
//
// A test that needs a missing program must never count as passed: on a
// developer machine it skips with a loud message, and under CI=true (set by
// .ci/run) it fails, so a missing install step in CI cannot hide.
//
// A test must pass on any day it runs: one that fixes a clock builds every
// certificate, token, record and file time it judges from that same clock
// (tests/controlplane.NewPKIAt), or takes its "now" from what it built.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// LookProgram finds prog in PATH, then in /usr/sbin and /sbin, where Debian
// installs nginx and haproxy but which a non-root PATH often lacks.
func LookProgram(prog string) (string, error) {
	p, err := exec.LookPath(prog)
	if err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		cand := filepath.Join(dir, prog)
		if st, serr := os.Stat(cand); serr == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return cand, nil
		}
	}
	return "", err
}

// RequireProgram returns the path of prog, which the Debian package pkg
// provides. If it is missing the test skips loudly, or fails when CI=true.
func RequireProgram(tb testing.TB, prog, pkg string) string {
	tb.Helper()
	p, err := LookProgram(prog)
	if err == nil {
		return p
	}
	SkipOrFail(tb, "!!! %s NOT INSTALLED: this test needs the real program; install it with `apt-get install -y %s` (.ci/run does) !!!", prog, pkg)
	return ""
}

// SkipOrFail is the one rule for a test that cannot run here: on a
// developer machine it skips, loudly, as not run and not passed; under
// CI=true, where a skipped test must never count as a pass, it fails.
func SkipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		tb.Fatal("CI=true and this test cannot run: " + msg)
	}
	tb.Skip("SKIPPED (not run, not passed): " + msg)
}

// SyncBuffer is an io.Writer safe for concurrent writers (exec.Cmd's stdout
// and stderr, slog handlers of servers).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
