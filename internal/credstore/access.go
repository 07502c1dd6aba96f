package credstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/gpuaas/provision/internal/system"
)

// Access is who may read the private key besides root: nobody (the
// default), or one group, paths.key_group, so a node-agent that does not
// run as root can read its identity. With a group, the key is 0640 and
// pki_dir and its generation directories 0750, all owned by that group;
// state_dir is 0710 in that group (its members pass through to pki_dir and
// tasks/ but cannot list it), tasks/ 0750 and a task handed off 0640, that
// group's. cert.pem and ca.pem are 0644 either way.
//
// Access is the one answer to "who may read the key": the modes written,
// the modes judged (lifecycle.Judge through Allows), and whether that group
// can really get to the key (Reach, walked as the kernel walks it).
type Access struct {
	// Group is set when GID, a group, may read the key.
	Group bool
	GID   int
	// Name is the group as configured (paths.key_group), for messages;
	// "" when only the id is known.
	Name string
}

// RootOnly is the default Access (the zero value): the key 0600, the
// directories 0700.
var RootOnly = Access{}

// GroupAccess lets group gid read the key.
func GroupAccess(gid int) Access { return Access{Group: true, GID: gid} }

// KeyMode is the mode a private key (and a task handed off) is written with.
func (a Access) KeyMode() os.FileMode {
	if a.Group {
		return 0o640
	}
	return 0o600
}

// DirMode is the mode of pki_dir, its generation directories and tasks/.
func (a Access) DirMode() os.FileMode {
	if a.Group {
		return 0o750
	}
	return 0o700
}

// StateDirMode is the mode of state_dir: with a group, its members may
// pass through (to pki_dir inside it and to tasks/) but not list it.
func (a Access) StateDirMode() os.FileMode {
	if a.Group {
		return 0o710
	}
	return 0o700
}

// Allows reports whether a file with mode and group gid gives no one more
// than a allows, where want is what a gives such a file (KeyMode or
// DirMode): nothing beyond want's bits, and group bits only for a's group.
func (a Access) Allows(mode os.FileMode, gid int, want os.FileMode) bool {
	if mode.Perm()&^want != 0 {
		return false
	}
	return mode.Perm()&0o070 == 0 || (a.Group && gid == a.GID)
}

// Describe says what a allows, for messages: "0600" or "0640 (group
// node-agent, 4242, paths.key_group)".
func (a Access) Describe(want os.FileMode) string {
	if a.Group {
		return fmt.Sprintf("%04o (group %s, paths.key_group)", want, a.group())
	}
	return fmt.Sprintf("%04o", want)
}

// group names the group for messages: "node-agent (4242)" or "4242".
func (a Access) group() string {
	if a.Name != "" && a.Name != fmt.Sprint(a.GID) {
		return fmt.Sprintf("%s (%d)", a.Name, a.GID)
	}
	return fmt.Sprint(a.GID)
}

// Give makes dir, a directory of provision's own, mode and, with a group,
// that group's. follow says whether dir may be a symbolic link to a
// directory (state_dir and pki_dir on another volume); the directories
// provision creates inside them may not. The directory is changed through
// a descriptor (fchown, fchmod), never by name: fchown is the one
// ownership call the units allow (SystemCallFilter=fchown; without
// CAP_CHOWN, as a member of the group: the key-group drop-in), and a
// directory already in the group is not chowned at all.
func (a Access) Give(dir string, mode os.FileMode, follow bool) error {
	flags := os.O_RDONLY | syscall.O_DIRECTORY | syscall.O_CLOEXEC
	if !follow {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(dir, flags, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dir, err)
	}
	defer f.Close()
	return a.giveFile(f, dir, mode)
}

// giveFile gives the open file f (at path) mode and, with a group, that
// group, chowning only when its group differs.
func (a Access) giveFile(f *os.File, path string, mode os.FileMode) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if a.Group && gidOf(st) != a.GID {
		if err := f.Chown(-1, a.GID); err != nil {
			return &ChownError{Path: path, Group: a.group(), Err: err}
		}
	}
	if st.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky) == mode {
		return nil
	}
	if err := f.Chmod(mode); err != nil { // umask must not loosen or tighten it
		return fmt.Errorf("restricting %s to %04o: %w", path, mode, err)
	}
	return nil
}

// GiveFile gives the open file f, which provision just created at path, a's
// file mode (KeyMode) and group: a task handed off, as a key is written.
func (a Access) GiveFile(f *os.File, path string) error { return a.giveFile(f, path, a.KeyMode()) }

// ChownError is a file provision could not give to the key group: under
// systemd, the unit is not a member of the group (no key-group drop-in) or
// fchown is filtered; or the filesystem does not support ownership.
type ChownError struct {
	Path, Group string
	Err         error
}

func (e *ChownError) Error() string {
	return fmt.Sprintf("giving %s to group %s (paths.key_group): %v", e.Path, e.Group, e.Err)
}

func (e *ChownError) Unwrap() error { return e.Err }

// CheckChown proves, before anything that cannot be taken back (a one-time
// token spent, a certificate the CA issued), that this process can give a
// new file in dir to a's group as a renewal will give its key: it creates a
// temp file there, gives it the group and removes it. Nothing to prove
// without a group. A failure is a *ChownError (or the temp file's error).
func (a Access) CheckChown(dir string) error {
	if !a.Group {
		return nil
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	path := filepath.Join(dir, system.TempPrefix+"chown-check-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer os.Remove(path)
	defer f.Close()
	if err := f.Chown(-1, a.GID); err != nil {
		return &ChownError{Path: dir, Group: a.group(), Err: err}
	}
	return nil
}

// gidOf is the group owning a file, -1 when unknown.
func gidOf(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Gid)
	}
	return -1
}

// ReachError says where a member of the key group is stopped on the way to
// a file, as the kernel would stop it.
type ReachError struct {
	Path    string      // the file the group must read (a node path)
	At      string      // the node path where the walk stopped
	Mode    os.FileMode // its permission bits
	UID     int         // its owner
	GID     int         // its group
	Want    string      // "search" (a directory) or "read" (the file)
	Group   string      // the key group, for messages
	Missing bool        // At does not exist
}

func (e *ReachError) Error() string {
	if e.Missing {
		return fmt.Sprintf("group %s cannot reach %s: %s does not exist", e.Group, e.Path, e.At)
	}
	return fmt.Sprintf("group %s (paths.key_group) cannot %s %s (%04o, owner %d, group %d), so it cannot read %s", e.Group, e.Want, e.At, e.Mode, e.UID, e.GID, e.Path)
}

// maxLinks bounds link resolution, as the kernel's ELOOP does.
const maxLinks = 40

// Reach reports whether a member of a's group, who is neither root nor the
// owner of any file on the way, can open each of paths (node paths under
// root, the host's view of the node's /) for reading, judged the way the
// kernel would: search permission on every directory from / down, symbolic
// links followed (an absolute target under root, ".." stopping at /), read
// permission on the file, each by its group bits when the group owns it and
// by its "other" bits when not. Access control lists are not read. The
// root directory itself is judged only when root is "/": a --root is the
// caller's scratch directory. nil without a group: root reads everything.
func (a Access) Reach(root string, paths ...string) error {
	if !a.Group {
		return nil
	}
	for _, p := range paths {
		if err := a.reach(root, p, 0o4); err != nil {
			return err
		}
	}
	return nil
}

// ReachDir is Reach for a directory the group must be able to search
// (pki_dir before a key is in it): search permission on it too.
func (a Access) ReachDir(root, dir string) error {
	if !a.Group {
		return nil
	}
	return a.reach(root, dir, 0o1)
}

// reach walks one node path p under root; final is what the group needs
// of p itself (0o4 read, 0o1 search).
func (a Access) reach(root, p string, final os.FileMode) error {
	if root == "" || root == "/" {
		root = "/"
		if err := a.may("/", "/", p, 0o1); err != nil {
			return err
		}
	}
	todo := components(p)
	at, hops := "/", 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		next := filepath.Join(at, c) // Clean: ".." stops at "/"
		host := filepath.Join(root, next)
		st, err := os.Lstat(host)
		if errors.Is(err, os.ErrNotExist) {
			return &ReachError{Path: p, At: next, Group: a.group(), Missing: true}
		}
		if err != nil {
			return err
		}
		if st.Mode()&os.ModeSymlink != 0 {
			if hops++; hops > maxLinks {
				return fmt.Errorf("%s: too many levels of symbolic links", p)
			}
			target, err := os.Readlink(host)
			if err != nil {
				return err
			}
			if filepath.IsAbs(target) {
				at = "/"
			}
			todo = append(components(target), todo...)
			continue
		}
		want := os.FileMode(0o1) // search
		if len(todo) == 0 {
			want = final
		}
		if err := a.may(host, next, p, want); err != nil {
			return err
		}
		at = next
	}
	return nil
}

// components splits a cleaned path into its names.
func components(p string) []string {
	return strings.FieldsFunc(filepath.Clean(p), func(r rune) bool { return r == '/' })
}

// may judges one step of the walk: want (0o1 search, 0o4 read) by the
// group's bits when a's group owns the file, else by the others' bits.
func (a Access) may(host, at, p string, want os.FileMode) error {
	st, err := os.Stat(host)
	if err != nil {
		return err
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	if sys == nil {
		return fmt.Errorf("%s: no ownership to judge", at)
	}
	mode := st.Mode().Perm()
	bits := mode
	if int(sys.Gid) == a.GID {
		bits >>= 3
	}
	if bits&want != 0 {
		return nil
	}
	what := "search"
	if want == 0o4 {
		what = "read"
	}
	return &ReachError{Path: p, At: at, Mode: mode, UID: int(sys.Uid), GID: int(sys.Gid), Want: what, Group: a.group()}
}
