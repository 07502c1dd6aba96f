package system

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// TempPrefix starts the name of every temporary file provision creates, so a
// sweep after a crash can find exactly its own leftovers.
const TempPrefix = ".provision-tmp-"

// WriteOptions says how WriteFileAtomic treats an existing file.
type WriteOptions struct {
	// Mode is the final permission bits, applied exactly (umask ignored).
	Mode os.FileMode
	// KeepOwner copies uid, gid and the SELinux label of an existing file, as
	// an edit of /etc/hosts must.
	KeepOwner bool
	// Hook is called with "before rename <base name>" once the new content
	// is in the temp file and before it is renamed over path: the one
	// instant a torn hosts file or receipt could be seen if the write were
	// not atomic, where the crash tests kill the process.
	Hook Hook
	// Replaceable is for a file whose content is worth nothing once the
	// machine restarts, rewritten by the next run (node_exporter's textfile
	// metrics): the rename is not made durable (no fsync of the
	// directory), so a power cut may bring back the previous file, whole.
	// The file is still fsynced before the rename: it is never seen torn.
	// It is also for a file whose directory the caller fsyncs itself, later
	// (hosts.ApplyToLater).
	Replaceable bool
}

// WriteFileAtomic replaces path with data so that a crash at any instant
// leaves either the old or the new content: a temp file in the same
// directory, fsync, rename, fsync of the directory (Dir.WriteAtomic in
// path's directory). The mode is set exactly: an existing file's is never
// kept, so a 0644 key becomes 0600.
//
// An existing path that is not a regular file (a symbolic link, a FIFO, a
// directory) is refused with an *UnsafeFileError: a rename would only replace
// a link, not write through it, but a link where provision keeps its own
// files was planted by someone, and saying so beats silently removing it.
// The temp file is created with O_EXCL under a random name, so it cannot be
// a planted link either.
func WriteFileAtomic(path string, data []byte, o WriteOptions) error {
	d, err := OpenDir(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("creating temp file in %s: %w", filepath.Dir(path), err)
	}
	defer d.Close()
	return d.WriteAtomic(filepath.Base(path), data, o)
}

// CreateDurable creates path, which must not exist, with data and exactly
// mode, and makes it durable: the file and its directory are fsynced at
// once (SyncAll), one wait for the disk where WriteFileAtomic has two in a
// row. Until it returns, a crash may leave the file missing, empty or
// partly written: it is only for a file that stands for nothing until it is
// complete, whose reader takes one that does not parse for none. hook is
// called with "before rename <base name>" once the data is written, the
// instant WriteFileAtomic's crash point names. An existing path (a link
// among them) fails with an error that is fs.ErrExist; on any other error
// the file is removed.
func CreateDurable(path string, data []byte, mode os.FileMode, hook Hook) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, mode&0o700)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := writeDurable(f, data, mode, hook); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

func writeDurable(f *os.File, data []byte, mode os.FileMode, hook Hook) error {
	if err := f.Chmod(mode); err != nil { // exactly mode, whatever the umask
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	hook.At("before rename " + filepath.Base(f.Name()))
	d, err := os.Open(filepath.Dir(f.Name()))
	if err != nil {
		return fmt.Errorf("opening %s to sync it: %w", filepath.Dir(f.Name()), err)
	}
	defer d.Close()
	return SyncAll(f, d)
}

// ErrBusy wraps the EBUSY a rename onto a bind-mounted file returns.
var ErrBusy = syscall.EBUSY

// WriteInPlace rewrites an existing file through its own inode: write the
// whole new content from offset 0, truncate to its length, fsync. It is the
// fallback for files that cannot be renamed over (a bind-mounted /etc/hosts in
// a container answers EBUSY). It is not crash-atomic, which is why it is only
// a fallback and why callers say when they used it. Like every write, it does
// not follow a symbolic link and refuses anything but a regular file.
func WriteInPlace(path string, data []byte) error {
	f, err := OpenRegular(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("opening %s for an in-place write: %w", path, err)
	}
	return rewrite(f, data)
}

// rewrite writes data over the open file f from offset 0, truncates it to
// its length, fsyncs and closes it.
func rewrite(f *os.File, data []byte) error {
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		return fmt.Errorf("writing %s in place: %w", f.Name(), err)
	}
	if err := f.Truncate(int64(len(data))); err != nil {
		return fmt.Errorf("truncating %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", f.Name(), err)
	}
	return f.Close()
}

// SyncDir fsyncs a directory so a rename inside it survives power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// SyncAll fsyncs files and directories at once, each from a goroutine of
// its own, and returns when all are durable: the disk takes them as one
// wait instead of one after the other. A directory that cannot be fsynced
// (EINVAL) is passed over, as SyncDir does.
func SyncAll(files ...*os.File) error {
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.Sync(); err != nil {
				if st, serr := f.Stat(); serr == nil && st.IsDir() && errors.Is(err, syscall.EINVAL) {
					return
				}
				errs[i] = fmt.Errorf("syncing %s: %w", f.Name(), err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SweepTemp removes temporary files a killed provision left in dir: its own
// prefix and renameio's ".<name><digits>" pattern for the given names.
func SweepTemp(dir string, names ...string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		// renameio.Symlink leaves a directory holding tmp.symlink when
		// killed before its rename: Remove would fail on it.
		if ownTemp(e.Name(), names) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// ownTemp says whether n is one of provision's temp files: its own prefix,
// or renameio's ".<name><digits>" for one of names.
func ownTemp(n string, names []string) bool {
	if strings.HasPrefix(n, TempPrefix) {
		return true
	}
	for _, base := range names {
		if strings.HasPrefix(n, "."+base) && len(n) > len(base)+1 && isDigits(n[len(base)+1:]) {
			return true
		}
	}
	return false
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}
