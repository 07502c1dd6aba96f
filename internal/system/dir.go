package system

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is a directory provision holds open to work in: every file in it is
// reached relative to the descriptor, never by a name another user could
// redirect, and never through a link at the file itself. Host.Chase opens
// one under the path rule; OpenDir opens one of provision's own.
type Dir struct {
	f    *os.File
	node string // the node path, as the config names it resolved ("" when opened by host path)
	path string // the path on this machine, for messages
}

// OpenDir opens the directory at the host path p as the kernel resolves it:
// for provision's own directories, whose parents ClaimDir judged, and
// tests.
func OpenDir(p string) (*Dir, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	return &Dir{f: os.NewFile(uintptr(fd), p), path: p}, nil
}

// Close releases the directory.
func (d *Dir) Close() error { return d.f.Close() }

// Path is the directory's path on this machine.
func (d *Dir) Path() string { return d.path }

// Node is the directory's node path with every link resolved ("" when it
// was opened by its host path).
func (d *Dir) Node() string { return d.node }

// Join is the path on this machine of name in the directory, for messages.
func (d *Dir) Join(name string) string { return filepath.Join(d.path, name) }

func (d *Dir) fd() int { return int(d.f.Fd()) }

// Lstat describes name in the directory without following a link there.
func (d *Dir) Lstat(name string) (fs.FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: d.Join(name), Err: err}
	}
	return statInfo{name: name, st: st}, nil
}

// ReadDir lists the directory's entries.
func (d *Dir) ReadDir() ([]fs.DirEntry, error) {
	f, err := d.reopen()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

// reopen is a second descriptor on the same directory, for a listing that
// must start at its beginning.
func (d *Dir) reopen() (*os.File, error) {
	fd, err := unix.Openat(d.fd(), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: d.path, Err: err}
	}
	return os.NewFile(uintptr(fd), d.path), nil
}

// OpenRegular is the package's OpenRegular for name in the directory: no
// link followed, no FIFO waited on, nothing but a regular file.
func (d *Dir) OpenRegular(name string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Openat(d.fd(), name, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, refusal(d.Join(name), &fs.PathError{Op: "open", Path: d.Join(name), Err: err})
	}
	return regularOnly(os.NewFile(uintptr(fd), d.Join(name)))
}

// ReadRegular is the package's ReadRegular for name in the directory.
func (d *Dir) ReadRegular(ctx context.Context, name string, max int64) ([]byte, error) {
	return readBounded(ctx, d.Join(name), max, func() (*os.File, error) { return d.OpenRegular(name, os.O_RDONLY, 0) })
}

// Remove removes name (not a directory) from the directory.
func (d *Dir) Remove(name string) error {
	if err := unix.Unlinkat(d.fd(), name, 0); err != nil {
		return &fs.PathError{Op: "remove", Path: d.Join(name), Err: err}
	}
	return nil
}

// Sync fsyncs the directory so a rename or removal in it survives power
// loss.
func (d *Dir) Sync() error {
	if err := d.f.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("syncing %s: %w", d.path, err)
	}
	return nil
}

// WriteAtomic is WriteFileAtomic for name in the directory.
func (d *Dir) WriteAtomic(name string, data []byte, o WriteOptions) error {
	path := d.Join(name)
	old, err := d.Lstat(name)
	switch {
	case err == nil && !old.Mode().IsRegular():
		return &UnsafeFileError{Path: path, Kind: FileKind(old.Mode())}
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	case err != nil:
		old = nil
	}
	tmp, f, err := d.createTemp(name)
	if err != nil {
		return fmt.Errorf("creating temp file in %s: %w", d.path, err)
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			unix.Unlinkat(d.fd(), tmp, 0)
		}
	}()
	if o.KeepOwner && old != nil {
		if err := d.copyOwner(f, name, old); err != nil {
			return err
		}
	}
	if err := fill(f, data, o.Mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	o.Hook.At("before rename " + name)
	if err := unix.Renameat(d.fd(), tmp, d.fd(), name); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	done = true
	if o.Replaceable {
		return nil
	}
	return d.Sync()
}

// Named is one file WriteAtomicAll writes: its name in the directory, its
// content and its exact mode.
type Named struct {
	Name string
	Data []byte
	Mode os.FileMode
}

// WriteAtomicAll replaces files of the directory, each atomically as
// WriteAtomic does, with one wait for the disk for all their contents and
// one for all their renames: every temp file is written, all are fsynced
// at once (SyncAll), then renamed in order (hook.At "before rename <name>"
// before each), and the directory is fsynced. A crash leaves each file old
// or new, whole; once it returns, all are durable.
func (d *Dir) WriteAtomicAll(files []Named, hook Hook) error {
	tmps := make([]string, 0, len(files))
	open := make([]*os.File, 0, len(files))
	renamed := 0
	defer func() {
		for _, f := range open {
			f.Close()
		}
		for _, tmp := range tmps[renamed:] {
			unix.Unlinkat(d.fd(), tmp, 0)
		}
	}()
	for _, n := range files {
		if old, err := d.Lstat(n.Name); err == nil && !old.Mode().IsRegular() {
			return &UnsafeFileError{Path: d.Join(n.Name), Kind: FileKind(old.Mode())}
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		tmp, f, err := d.createTemp(n.Name)
		if err != nil {
			return fmt.Errorf("creating temp file in %s: %w", d.path, err)
		}
		tmps, open = append(tmps, tmp), append(open, f)
		if _, err := f.Write(n.Data); err != nil {
			return fmt.Errorf("writing %s: %w", d.Join(n.Name), err)
		}
		if err := f.Chmod(n.Mode); err != nil {
			return fmt.Errorf("writing %s: %w", d.Join(n.Name), err)
		}
	}
	if err := SyncAll(open...); err != nil {
		return err
	}
	for i, n := range files {
		hook.At("before rename " + n.Name)
		if err := unix.Renameat(d.fd(), tmps[i], d.fd(), n.Name); err != nil {
			return fmt.Errorf("replacing %s: %w", d.Join(n.Name), err)
		}
		renamed = i + 1
	}
	return d.Sync()
}

// createTemp creates a new file in the directory named as renameio names
// its temp files (".<name><digits>", which SweepTemp knows), exclusively,
// so it can be nothing planted.
func (d *Dir) createTemp(name string) (string, *os.File, error) {
	for range 100 {
		tmp := "." + name + strconv.FormatUint(rand.Uint64()%1e15, 10)
		fd, err := unix.Openat(d.fd(), tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return "", nil, err
		}
		return tmp, os.NewFile(uintptr(fd), d.Join(tmp)), nil
	}
	return "", nil, errors.New("no free temp file name")
}

// fill writes data into the new file f, sets its mode exactly (the umask
// does not apply to fchmod), fsyncs and closes it, whatever fails.
func fill(f *os.File, data []byte, mode os.FileMode) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// copyOwner gives the new file f the uid, gid and SELinux label of name
// (described by old): /etc/hosts is net_conf_t, and a renamed-in temp file
// would otherwise carry the directory's default.
func (d *Dir) copyOwner(f *os.File, name string, old fs.FileInfo) error {
	st := old.Sys().(*unix.Stat_t)
	if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("keeping the owner of %s: %w", d.Join(name), err)
	}
	src, err := d.OpenRegular(name, os.O_RDONLY, 0)
	if err != nil {
		return nil // gone or replaced since: the rename's re-check is the caller's
	}
	defer src.Close()
	buf := make([]byte, 256)
	n, err := unix.Fgetxattr(int(src.Fd()), "security.selinux", buf)
	if err == nil && n > 0 {
		if err := unix.Fsetxattr(int(f.Fd()), "security.selinux", buf[:n], 0); err != nil &&
			!errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("keeping the SELinux label of %s: %w", d.Join(name), err)
		}
	}
	return nil
}

// WriteInPlace is the package's WriteInPlace for name in the directory.
func (d *Dir) WriteInPlace(name string, data []byte) error {
	f, err := d.OpenRegular(name, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("opening %s for an in-place write: %w", d.Join(name), err)
	}
	return rewrite(f, data)
}

// SweepTemp removes the temp files a killed provision left in the
// directory (see SweepTemp); only files and links, never a directory of
// somebody else's.
func (d *Dir) SweepTemp(names ...string) {
	ents, err := d.ReadDir()
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() && ownTemp(e.Name(), names) {
			unix.Unlinkat(d.fd(), e.Name(), 0)
		}
	}
}

// statInfo is an fs.FileInfo from a stat.
type statInfo struct {
	name string
	st   unix.Stat_t
}

func (s statInfo) Name() string       { return s.name }
func (s statInfo) Size() int64        { return s.st.Size }
func (s statInfo) Mode() fs.FileMode  { return fileMode(s.st.Mode) }
func (s statInfo) ModTime() time.Time { return time.Unix(s.st.Mtim.Unix()) }
func (s statInfo) IsDir() bool        { return s.Mode().IsDir() }
func (s statInfo) Sys() any           { return &s.st }
