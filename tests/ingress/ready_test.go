package ingress

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestWaitReadyOwnsTheListener: a dial that reaches another process's
// listener on the ingress's port is not readiness. While the program
// runs, waitReady keeps waiting; when it exits, the port was taken
// (errPortTaken, which Start retries with another port). A listener of
// the program's own process group is ready.
func TestWaitReadyOwnsTheListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0") // another test's listener, in this process
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	if !groupListens(syscall.Getpgrp(), port) {
		t.Fatalf("the test's own listener on %d is not seen as its process group's", port)
	}

	cmd := exec.Command("sleep", "0.3") // the program, which never binds the port
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	if groupListens(cmd.Process.Pid, port) {
		t.Fatal("another process group's listener taken for the program's")
	}
	err = waitReady(context.Background(), l.Addr().String(), exited, 5*time.Second, cmd.Process.Pid)
	if !errors.Is(err, errPortTaken) {
		t.Fatalf("waitReady = %v, want errPortTaken once the program exited", err)
	}
}
