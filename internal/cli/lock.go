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

	"github.com/gpuaas/provision/internal/system"
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
//
// provision runs as root, so the lock is opened the careful way: state_dir is
// claimed as provision's own (system.ClaimDir: created 0700, refused when
// it holds other files, tightened to 0700, with a warning, if anyone else
// could write into it), and the lock file is never a symbolic link, a FIFO
// or a hard link to some other file; each is refused, since truncating it
// would truncate whatever it points at.
func lock(ctx context.Context, stateDir string, wait time.Duration, log *slog.Logger) (func(), error) {
	ds, err := system.ClaimDir(stateDir, true)
	if err != nil {
		return nil, &lockError{msg: fmt.Sprintf("preparing the state directory: %v", err)}
	}
	if ds.Tightened {
		log.Warn("state directory was writable by other users; restricted it to 0700", "dir", stateDir, "was", fmt.Sprintf("%04o", ds.WasMode))
	}
	path := filepath.Join(stateDir, LockFile)
	f, err := system.OpenRegular(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, &lockError{msg: fmt.Sprintf("opening lock %s: %v", path, err)}
	}
	if n := system.Links(f); n != 1 {
		f.Close()
		return nil, &lockError{msg: fmt.Sprintf("opening lock %s: it has %d hard links, so it is also some other file that provision would truncate; remove it and check who created it", path, n)}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		// The holder writes its pid just after taking the lock, so a waiter
		// that lost the race by microseconds may find the file still empty:
		// look again briefly before calling the holder unknown.
		holder := "unknown"
		buf := make([]byte, 32)
		for i := 0; i < 10 && holder == "unknown"; i++ {
			if n, _ := f.ReadAt(buf, 0); strings.TrimSpace(string(buf[:n])) != "" {
				holder = "pid " + strings.TrimSpace(string(buf[:n]))
			} else {
				time.Sleep(10 * time.Millisecond)
			}
		}
		start := time.Now()
		log.Warn("waiting for the lock", "lock", path, "holder", holder)
		deadline := time.Now().Add(wait)
		for {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
			}
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
