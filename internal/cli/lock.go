package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// LockFile is the lock under state_dir that serialises provision runs on a
// node (cloud-init's runcmd and the systemd unit may both start one).
const LockFile = ".lock"

type lockError struct {
	busy bool
	msg  string
}

func (e *lockError) Error() string { return e.msg }

// lock takes an exclusive flock on state_dir/.lock, waiting up to wait. The
// holder's pid is written into the file so a waiter can say whom it waits for.
func lock(ctx context.Context, stateDir string, wait time.Duration, log *slog.Logger) (func(), error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, &lockError{msg: fmt.Sprintf("creating %s: %v", stateDir, err)}
	}
	path := filepath.Join(stateDir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, &lockError{msg: fmt.Sprintf("opening lock %s: %v", path, err)}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		// The holder writes its pid just after taking the lock, so a waiter
		// that lost the race by microseconds may find the file still empty:
		// look again briefly before calling the holder unknown.
		holder := "unknown"
		for i := 0; i < 10 && holder == "unknown"; i++ {
			if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) != "" {
				holder = "pid " + strings.TrimSpace(string(b))
			} else {
				time.Sleep(10 * time.Millisecond)
			}
		}
		start := time.Now()
		log.Warn("waiting for the lock", "lock", path, "holder", holder)
		deadline := time.Now().Add(wait)
		for {
			time.Sleep(200 * time.Millisecond)
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
				log.Info("lock acquired", "lock", path, "waited", time.Since(start).Round(time.Millisecond).String(), "holder_was", holder)
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				f.Close()
				return nil, &lockError{busy: true, msg: fmt.Sprintf("waited %s for the lock %s held by %s", time.Since(start).Round(time.Second), path, holder)}
			}
		}
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() {
		f.Truncate(0)
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
