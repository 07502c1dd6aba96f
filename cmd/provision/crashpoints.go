//go:build crashpoints

// This file exists only in test builds (go build -tags crashpoints). It lets
// tests/reliability kill the real binary at an exact step: when
// PROVISION_CRASH_AT names a crash point (system.Host.Hook: bootstrap's,
// renew's, the credential store's and every atomic write's), the process
// sends itself SIGKILL there, as a power cut or an OOM kill would. PROVISION_CRASH_AT may list several steps separated by
// '|'; the first one reached kills. The production binary carries none of
// this: the hooks stay nil.

package main

import (
	"os"
	"strings"
	"syscall"
)

func init() {
	at := os.Getenv("PROVISION_CRASH_AT")
	if at == "" {
		return
	}
	want := map[string]bool{}
	for _, s := range strings.Split(at, "|") {
		want[strings.TrimSpace(s)] = true
	}
	kill := func(step string) {
		if want[step] {
			os.Stderr.WriteString("crashpoints: SIGKILL at " + step + "\n")
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // never returns: the signal is delivered
		}
	}
	crashHook = kill
}
