//go:build crashpoints

// This file exists only in test builds (go build -tags crashpoints). It lets
// tests/reliability kill the real binary at an exact step: when
// PROVISION_CRASH_AT names a step passed to bootstrap.Hook, credstore.Hook,
// renew.Hook or system.Hook, the process sends itself SIGKILL there, as a power cut or an
// OOM kill would. PROVISION_CRASH_AT may list several steps separated by
// '|'; the first one reached kills. The production binary carries none of
// this: the hooks stay nil.

package main

import (
	"os"
	"strings"
	"syscall"

	"github.com/gpuaas/provision/internal/bootstrap"
	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/renew"
	"github.com/gpuaas/provision/internal/system"
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
	bootstrap.Hook = kill
	credstore.Hook = kill
	renew.Hook = kill
	system.Hook = kill
}
