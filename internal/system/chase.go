package system

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The path rule. provision runs as root and writes in places other programs
// own: node_exporter's textfile directory (Debian gives /var/lib/prometheus
// to the prometheus user), the hosts file's directory, the parents of a
// moved state_dir or pki_dir, the token's directory. A link planted on the
// way would make root write where that link's owner chose: the exporter's
// user replacing node-exporter by a link to /etc/sudoers.d had the next
// run write a metrics file there, and sudo stopped working machine-wide.
//
// So every such path goes through Host.Chase, one component at a time, with
// the kernel doing the work: each directory is opened relative to the one
// before with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) (openat with
// O_NOFOLLOW on kernels without it), so no link is ever followed behind
// provision's back, and what was judged is what is used: the descriptor,
// not the name, which another user could swap a moment later. A link is
// followed only when root owns it and it sits in a directory only root can
// write (owned by root, writable by no one else but root's own group; a
// sticky one counts when root owns the link): then nobody but root chose
// where it points or can change it. That is the rule systemd's
// chase() applies to "unsafe transitions". Anything else is refused with
// an *UnsafePathError naming the link and its owner. Resolution stays
// inside --root: an absolute target starts again at the root, and ".."
// stops there.
//
// os.Root keeps resolution inside a directory too, but it follows every
// link that stays inside, whoever planted it: the rule is the point here.

// ChaseOptions say what Host.Chase resolves and how.
type ChaseOptions struct {
	// Dir: the path names a directory, which Chase opens (every component
	// must be a directory or a link to one under the rule). Otherwise the
	// path names a file: Chase opens its directory and returns its name.
	Dir bool
	// FollowLast: a link at the file's own name is followed under the
	// rule, as a link on the way is (a symlinked hosts file is edited at
	// its target). Otherwise the name is returned as it is, link or not,
	// for the caller's no-follow open to refuse.
	FollowLast bool
	// Mkdir: a missing directory on the way is created 0755 (as a package
	// manager would), by root, inside the directory already opened.
	Mkdir bool
	// Own: the path is one of provision's own directories (state_dir,
	// pki_dir), which later steps reach by name. Every directory on the way
	// must then be one only root can write, so nobody can rename a
	// component and put a link in its place between two steps.
	Own bool
}

// UnsafePathError says the path rule refused a path: a link provision
// would have to follow that root does not own or that sits in a directory
// someone else can write, or (for provision's own directories) a
// directory on the way that someone else can write.
type UnsafePathError struct {
	Path  string // the link or directory refused, as a node path
	Owner string // who controls it: "uid 1001 (prometheus)", "others (mode 0777)", "group 50 (staff) (mode 2775)"
	Why   string // what it is, worded after the path
}

func (e *UnsafePathError) Error() string {
	return fmt.Sprintf("%s %s: provision runs as root and follows a link only when root owns it and only root can write the directory holding it, and keeps its own directories only under directories only root can write; point the config at the real path, or have root own it",
		e.Path, e.Why)
}

// ErrUnsafePath matches every *UnsafePathError with errors.Is.
var ErrUnsafePath = errors.New("path controlled by another user")

// Is makes errors.Is(err, ErrUnsafePath) true.
func (e *UnsafePathError) Is(target error) bool { return target == ErrUnsafePath }

// Chase resolves the node path p inside Root under the path rule and
// returns the directory it ends in, opened, and (unless o.Dir) the final
// name in it, which may not exist. The caller closes the Dir. A component
// that is missing is an error wrapping fs.ErrNotExist (unless o.Mkdir);
// one that is not a directory names what it is; a link the rule refuses is
// an *UnsafePathError.
//
// It is the one way provision reaches a path outside its own directories
// as root: the metrics textfile directory, the hosts file, the token file,
// and the parents of state_dir and pki_dir (ClaimDir).
func (h *Host) Chase(p string, o ChaseOptions) (*Dir, string, error) {
	w, err := h.newWalker(o)
	if err != nil {
		return nil, "", err
	}
	defer w.close()
	name, err := w.run(splitPath(p))
	if err != nil {
		return nil, "", err
	}
	if !o.Dir && name == "" {
		return nil, "", fmt.Errorf("%s names a directory, not a file", p)
	}
	return w.take(), name, nil
}

// walker is one resolution: the directories opened so far, Root first.
type walker struct {
	h     *Host
	o     ChaseOptions
	stack []opened
	hops  int
	rest  []string // what was left to resolve when a component was missing
}

type opened struct {
	fd   int
	node string // the node path of this directory, links resolved
	st   unix.Stat_t
}

func (h *Host) newWalker(o ChaseOptions) (*walker, error) {
	root := h.Root
	if root == "" {
		root = "/"
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	w := &walker{h: h, o: o}
	if err := w.push(fd, "/"); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return w, nil
}

// run resolves todo from the top of the stack; it returns the final name
// when the path names a file.
func (w *walker) run(todo []string) (string, error) {
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		if c == ".." {
			w.up()
			continue
		}
		var more []string
		var err error
		if len(todo) == 0 && !w.o.Dir {
			var link bool
			if more, link, err = w.last(c); err == nil && !link {
				return c, nil
			}
		} else {
			more, err = w.enter(c)
		}
		if err != nil {
			w.rest = append([]string{c}, todo...)
			return "", err
		}
		todo = append(more, todo...)
	}
	return "", nil
}

func (w *walker) top() *opened { return &w.stack[len(w.stack)-1] }

// nodePath is the node path of c in the directory on top.
func (w *walker) nodePath(c string) string { return filepath.Join(w.top().node, c) }

// up goes to the parent of the directory on top; ".." stops at Root.
func (w *walker) up() {
	if len(w.stack) > 1 {
		unix.Close(w.top().fd)
		w.stack = w.stack[:len(w.stack)-1]
	}
}

// toRoot starts again at Root, for an absolute link target.
func (w *walker) toRoot() {
	for len(w.stack) > 1 {
		w.up()
	}
}

// push makes fd, the directory c of the one on top, the new top.
func (w *walker) push(fd int, c string) error {
	o := opened{fd: fd, node: "/"}
	if len(w.stack) > 0 {
		o.node = w.nodePath(c)
	}
	if err := unix.Fstat(fd, &o.st); err != nil {
		return &fs.PathError{Op: "stat", Path: o.node, Err: err}
	}
	w.stack = append(w.stack, o)
	return nil
}

// enter opens the directory c on the way, following a link there under the
// rule: it returns the link's target to resolve instead.
func (w *walker) enter(c string) ([]string, error) {
	fd, err := openDirAt(w.top().fd, c)
	if err == nil {
		if err := w.ownCheck(c, fd); err != nil {
			unix.Close(fd)
			return nil, err
		}
		if err := w.push(fd, c); err != nil {
			unix.Close(fd)
			return nil, err
		}
		return nil, nil
	}
	afterOpenFailed(w.top().fd, c)
	var st unix.Stat_t
	serr := unix.Fstatat(w.top().fd, c, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(serr, unix.ENOENT) && w.o.Mkdir:
		if w.o.Own && !w.ownParent(uint32(os.Geteuid())) {
			return nil, w.unsafeIn(c) // judged before anything is created
		}
		if err := unix.Mkdirat(w.top().fd, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, &fs.PathError{Op: "mkdir", Path: w.h.rawPath(w.nodePath(c)), Err: err}
		}
		return []string{c}, nil // enter what is there now, judged like anything else
	case errors.Is(serr, unix.ENOENT):
		return nil, &fs.PathError{Op: "open", Path: w.h.rawPath(w.nodePath(c)), Err: fs.ErrNotExist}
	case serr != nil:
		return nil, &fs.PathError{Op: "stat", Path: w.h.rawPath(w.nodePath(c)), Err: serr}
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return w.follow(c, &st)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return nil, fmt.Errorf("%s is a %s, not a directory", w.nodePath(c), FileKind(fileMode(st.Mode)))
	case errors.Is(err, unix.ENOENT) && w.hops < maxLinks:
		// It was made between the open and the look (another run creating
		// the same parents at the same moment): enter what is there now,
		// judged like anything else; counted as a hop, so it cannot loop.
		w.hops++
		return []string{c}, nil
	}
	return nil, &fs.PathError{Op: "open", Path: w.h.rawPath(w.nodePath(c)), Err: err}
}

// afterOpenFailed runs between a failed open of a directory and the look
// at what is there: a test makes the directory appear in between, as
// another run creating the same parents does.
var afterOpenFailed = func(dirfd int, name string) {}

// last looks at the file's own name c: a link there is followed under the
// rule when o.FollowLast asks (link is true, more its target); otherwise c
// is the name.
func (w *walker) last(c string) (more []string, link bool, err error) {
	var st unix.Stat_t
	err = unix.Fstatat(w.top().fd, c, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK && w.o.FollowLast:
		more, err = w.follow(c, &st)
		return more, true, err
	case errors.Is(err, unix.ENOENT):
		st.Uid = uint32(os.Geteuid()) // provision will create it
	case err != nil:
		return nil, false, &fs.PathError{Op: "stat", Path: w.h.rawPath(w.nodePath(c)), Err: err}
	}
	if w.o.Own && !w.ownParent(st.Uid) {
		return nil, false, w.unsafeIn(c)
	}
	return nil, false, nil
}

// unsafeIn refuses c, one of provision's own directories or a directory
// on the way to one, for sitting in a directory someone else can write.
func (w *walker) unsafeIn(c string) error {
	who := w.writers(w.top())
	return &UnsafePathError{Path: w.nodePath(c), Owner: who, Why: "is in " + w.top().node + ", which " + who + " can write"}
}

// follow judges the link c (lstat as st) by the rule and returns its
// target's components to resolve in its place.
func (w *walker) follow(c string, st *unix.Stat_t) ([]string, error) {
	dir := w.top()
	switch {
	case !trusted(st.Uid):
		owner := w.h.owner(st.Uid)
		return nil, &UnsafePathError{Path: w.nodePath(c), Owner: owner, Why: "is a symbolic link owned by " + owner}
	case !onlyRootWrites(&dir.st, st.Uid):
		return nil, &UnsafePathError{Path: w.nodePath(c), Owner: w.writers(dir),
			Why: "is a symbolic link in " + dir.node + ", which " + w.writers(dir) + " can write"}
	}
	if w.hops++; w.hops > maxLinks {
		return nil, fmt.Errorf("%s: too many levels of symbolic links", w.nodePath(c))
	}
	target, err := readlinkAt(dir.fd, c)
	if err != nil {
		return nil, &fs.PathError{Op: "readlink", Path: w.h.rawPath(w.nodePath(c)), Err: err}
	}
	if filepath.IsAbs(target) {
		w.toRoot()
	}
	return splitPath(target), nil
}

// ownCheck: for provision's own directories, the directory c (opened as
// fd) must sit in one only root can write.
func (w *walker) ownCheck(c string, fd int) error {
	if !w.o.Own {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "stat", Path: w.h.rawPath(w.nodePath(c)), Err: err}
	}
	if w.ownParent(st.Uid) {
		return nil
	}
	return w.unsafeIn(c)
}

// ownParent says whether the directory on top may hold one of provision's
// own directories (or the way to one), whose owner is uid: only root can
// write it, or it is itself a directory of provision's this run claimed
// (state_dir holding pki_dir: tightened by its own claim).
func (w *walker) ownParent(uid uint32) bool {
	return onlyRootWrites(&w.top().st, uid) || w.h.isClaimed(w.top().node)
}

// writers says who besides root can write the directory d.
func (w *walker) writers(d *opened) string {
	mode := d.st.Mode & 0o7777
	switch {
	case !trusted(d.st.Uid):
		return w.h.owner(d.st.Uid)
	case mode&0o002 != 0:
		return fmt.Sprintf("others (mode %04o)", mode)
	}
	return fmt.Sprintf("%s (mode %04o)", w.h.group(d.st.Gid), mode)
}

// take hands the directory on top to the caller.
func (w *walker) take() *Dir {
	o := w.top()
	w.stack = w.stack[:len(w.stack)-1]
	return &Dir{f: os.NewFile(uintptr(o.fd), w.h.rawPath(o.node)), node: o.node, path: w.h.rawPath(o.node)}
}

func (w *walker) close() {
	for _, o := range w.stack {
		unix.Close(o.fd)
	}
	w.stack = nil
}

// trusted says whether uid is root's (or this process's own, for a run
// that is not root's: tests and installers as a user).
func trusted(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }

// onlyRootWrites says whether only root can change an entry owned by
// entryUID in the directory dir: a trusted owner, no write for others, and
// none for a group other than root's, unless the directory is sticky (only
// an entry's owner may rename or remove it) and root owns the entry.
func onlyRootWrites(dir *unix.Stat_t, entryUID uint32) bool {
	switch {
	case !trusted(dir.Uid):
		return false
	case dir.Mode&unix.S_ISVTX != 0 && trusted(entryUID):
		return true
	}
	return dir.Mode&0o002 == 0 && (dir.Mode&0o020 == 0 || dir.Gid == 0)
}

// openDirAt opens the directory name in dirfd without following a link
// and without leaving dirfd: openat2 says so to the kernel; openat with
// O_NOFOLLOW does the same for one component where openat2 is missing
// (before Linux 5.6, or filtered by a container's seccomp profile).
func openDirAt(dirfd int, name string) (int, error) {
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{Flags: uint64(flags),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	return fd, err
}

func readlinkAt(dirfd int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	if n == len(buf) {
		return "", unix.ENAMETOOLONG
	}
	return string(buf[:n]), nil
}

// fileMode converts a stat mode to an fs.FileMode (type and permissions).
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}
