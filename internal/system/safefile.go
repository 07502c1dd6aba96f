package system

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// provision runs as root, often before anyone has looked at the machine. A
// symbolic link planted where it writes (state_dir/.lock pointing at
// /etc/shadow, say) would make it truncate or overwrite the link's target
// as root, and a FIFO where it reads would hang it forever. So every file it
// opens for writing or locking is opened here: without following a link at
// the last path component, without blocking on a FIFO, and only if it is a
// regular file.

// UnsafeFileError says that a path provision would write, lock or read a
// secret from is not a regular file, and so was refused.
type UnsafeFileError struct {
	Path string
	Kind string // "symbolic link", "FIFO", "directory", "device", ...
	Why  string // optional detail
}

func (e *UnsafeFileError) Error() string {
	msg := fmt.Sprintf("%s is a %s, not a regular file: provision does not open it (it never follows a link, reads a FIFO or writes a device at a path it uses)", e.Path, e.Kind)
	if e.Why != "" {
		msg = fmt.Sprintf("%s: %s", e.Path, e.Why)
	}
	return msg + "; remove it and check who created it"
}

// ErrUnsafeFile matches every *UnsafeFileError with errors.Is.
var ErrUnsafeFile = errors.New("not a regular file")

// Is makes errors.Is(err, ErrUnsafeFile) true.
func (e *UnsafeFileError) Is(target error) bool { return target == ErrUnsafeFile }

// FileKind names the type of a file mode for messages.
func FileKind(m os.FileMode) string {
	switch {
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	case m.IsDir():
		return "directory"
	case m&os.ModeNamedPipe != 0:
		return "FIFO"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "block device"
	case m.IsRegular():
		return "regular file"
	}
	return "special file"
}

// OpenRegular opens path with flag (os.O_RDONLY, os.O_RDWR|os.O_CREATE, ...)
// and perm, refusing anything but a regular file: a symbolic link at the last
// component is not followed (O_NOFOLLOW), a FIFO does not block the open
// (O_NONBLOCK, which regular files ignore), and the opened file is checked
// with fstat, so what is checked is what is used. A refusal is an
// *UnsafeFileError.
func OpenRegular(path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, perm)
	if err != nil {
		return nil, refusal(path, err)
	}
	return regularOnly(f)
}

// refusal names the open error of path that says what it is: a link (with
// O_NOFOLLOW), a FIFO without a reader (opened for writing), a directory.
func refusal(path string, err error) error {
	switch {
	case errors.Is(err, syscall.ELOOP):
		return &UnsafeFileError{Path: path, Kind: "symbolic link"}
	case errors.Is(err, syscall.ENXIO):
		return &UnsafeFileError{Path: path, Kind: "FIFO"}
	case errors.Is(err, syscall.EISDIR):
		return &UnsafeFileError{Path: path, Kind: "directory"}
	}
	return err
}

// regularOnly checks the opened f with fstat, so what is checked is what
// is used: anything but a regular file is closed and refused.
func regularOnly(f *os.File) (*os.File, error) {
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &UnsafeFileError{Path: f.Name(), Kind: FileKind(st.Mode())}
	}
	return f, nil
}

// Links returns the hard-link count of an open file (1 when unknown).
func Links(f *os.File) uint64 {
	st, err := f.Stat()
	if err != nil {
		return 1
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Nlink)
	}
	return 1
}

// TooLargeError says a file is larger than the bound its reader set.
type TooLargeError struct {
	Path string
	Max  int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s is larger than %d bytes: refusing to read it", e.Path, e.Max)
}

// ReadRegular reads a regular file of at most max bytes (more is a
// *TooLargeError), refusing links,
// FIFOs, devices and directories before anything could block on them
// (OpenRegular), and giving up when ctx ends even if the read itself hangs
// (a stuck network filesystem): the read then finishes, or not, in the
// background, and its result is dropped.
func ReadRegular(ctx context.Context, path string, max int64) ([]byte, error) {
	return readBounded(ctx, path, max, func() (*os.File, error) { return OpenRegular(path, os.O_RDONLY, 0) })
}

// readBounded reads what open opens (path, for messages) within max bytes,
// giving up when ctx ends.
func readBounded(ctx context.Context, path string, max int64, open func() (*os.File, error)) ([]byte, error) {
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		f, err := open()
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, max+1))
		if err == nil && int64(len(b)) > max {
			err = &TooLargeError{Path: path, Max: max}
			b = nil
		}
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("reading %s: gave up: %w", path, context.Cause(ctx))
	}
}

// DirState says what EnsurePrivateDir found and did.
type DirState struct {
	Created   bool        // the directory did not exist and was created 0700
	Tightened bool        // it existed with group or other write and was made 0700
	WasMode   os.FileMode // its permission bits as found
	Marked    bool        // ClaimDir wrote OwnMark in it (created, or claimed now)
}

// EnsurePrivateDir makes sure the directory path, which provision owns
// (state_dir, pki_dir and their subdirectories), exists, is a directory owned
// by this process's user, and is not writable by group or others: it is
// created 0700 (missing parents 0755, as a package manager would), and an
// existing one with group or other write is tightened to 0700, which the
// caller should log. Only path itself is ever chmodded, never a parent.
//
// followLink says whether path may itself be a symbolic link to a
// directory (a configured state_dir or pki_dir on another volume); the
// subdirectories provision creates inside them may not.
func EnsurePrivateDir(path string, followLink bool) (DirState, error) {
	var s DirState
	err := os.Mkdir(path, 0o700)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return s, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
		}
		err = os.Mkdir(path, 0o700)
	}
	if err == nil {
		s.Created = true
		// The umask may have taken bits off; 0700 exactly is the point.
		if err := os.Chmod(path, 0o700); err != nil {
			return s, fmt.Errorf("restricting %s to 0700: %w", path, err)
		}
		return s, nil
	}
	if !errors.Is(err, os.ErrExist) {
		return s, fmt.Errorf("creating %s: %w", path, err)
	}
	st, err := os.Lstat(path)
	if err != nil {
		return s, err
	}
	if st.Mode()&os.ModeSymlink != 0 && !followLink {
		return s, &UnsafeFileError{Path: path, Kind: "symbolic link", Why: "is a symbolic link where provision keeps its own directory; it does not write through it"}
	}
	if st, err = ownDirAt(path, st); err != nil {
		return s, err
	}
	s.WasMode = st.Mode().Perm()
	s.Tightened, err = restrictOpenDir(path, s.WasMode)
	return s, err
}

// ownDirAt judges what Lstat found at path where provision keeps a
// directory of its own: a link is followed (the caller decided it may
// be), and what it finds must be a directory this process's user owns.
// It returns what the directory's Stat says.
func ownDirAt(path string, st os.FileInfo) (os.FileInfo, error) {
	if st.Mode()&os.ModeSymlink != 0 {
		var err error
		if st, err = os.Stat(path); err != nil {
			return nil, fmt.Errorf("%s is a symbolic link to nothing usable: %w", path, err)
		}
	}
	if !st.IsDir() {
		return nil, &UnsafeFileError{Path: path, Kind: FileKind(st.Mode()), Why: fmt.Sprintf("is a %s where provision needs its own directory", FileKind(st.Mode()))}
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return nil, &UnsafeFileError{Path: path, Kind: "directory", Why: fmt.Sprintf("is owned by uid %d, not by provision's uid %d: another user could plant files in it", sys.Uid, os.Geteuid())}
	}
	return st, nil
}

// restrictOpenDir restricts provision's directory path, of mode mode, to
// 0700 when group or others could write into it; it reports whether it
// did.
func restrictOpenDir(path string, mode os.FileMode) (bool, error) {
	if mode&0o022 == 0 {
		return false, nil
	}
	if err := os.Chmod(path, 0o700); err != nil {
		return false, fmt.Errorf("restricting %s (mode %04o, writable by others) to 0700: %w", path, mode, err)
	}
	return true, nil
}

// maxLinks bounds link resolution, as the kernel's ELOOP does.
const maxLinks = 40

// Resolve follows the symbolic links in the node path p the way a process
// chrooted into Root would see them (an absolute link target is taken under
// Root, and ".." never climbs above Root), under the path rule of
// Host.Chase: a link root does not own, or in a directory someone else can
// write, is an *UnsafePathError. It returns the node path with no links
// left (its last components may not exist yet). Root stays a sandbox: a
// link cannot lead provision to a file outside it.
func (h *Host) Resolve(p string) (string, error) {
	w, err := h.newWalker(ChaseOptions{FollowLast: true})
	if err != nil {
		return "", err
	}
	defer w.close()
	name, err := w.run(splitPath(p))
	if errors.Is(err, fs.ErrNotExist) {
		return filepath.Join(append([]string{w.top().node}, w.rest...)...), nil
	}
	if err != nil {
		return "", err
	}
	return filepath.Join(w.top().node, name), nil
}

// ResolvedPath is Path(Resolve(p)), or Path(p) when p cannot be resolved.
func (h *Host) ResolvedPath(p string) string {
	r, err := h.Resolve(p)
	if err != nil {
		return h.Path(p)
	}
	return h.rawPath(r)
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}
