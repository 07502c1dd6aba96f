package credstore

import (
	"fmt"
	"os"
	"syscall"
)

// Access is who may read the private key besides root: nobody (the
// default), or one group, paths.key_group, so a node-agent that does not
// run as root can read its identity. With a group, the key is 0640 and
// pki_dir and its generation directories 0750, all owned by that group;
// nothing else changes (cert.pem and ca.pem are 0644 either way).
type Access struct {
	// Group is set when GID, a group, may read the key.
	Group bool
	GID   int
}

// RootOnly is the default Access (the zero value): the key 0600, the
// directories 0700.
var RootOnly = Access{}

// GroupAccess lets group gid read the key.
func GroupAccess(gid int) Access { return Access{Group: true, GID: gid} }

// KeyMode is the mode a private key is written with.
func (a Access) KeyMode() os.FileMode {
	if a.Group {
		return 0o640
	}
	return 0o600
}

// DirMode is the mode of pki_dir and its generation directories.
func (a Access) DirMode() os.FileMode {
	if a.Group {
		return 0o750
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

// Describe says what a allows, for messages: "0600" or "0640 for group 4242".
func (a Access) Describe(want os.FileMode) string {
	if a.Group {
		return fmt.Sprintf("%04o (group %d, paths.key_group)", want, a.GID)
	}
	return fmt.Sprintf("%04o", want)
}

// apply gives path its mode and, with a group, that group.
// givingErr is a failure to give path to the key group gid.
func givingErr(path string, gid int, err error) error {
	return fmt.Errorf("giving %s to group %d (paths.key_group): %w", path, gid, err)
}

func (a Access) apply(path string, mode os.FileMode) error {
	if a.Group {
		if err := os.Lchown(path, -1, a.GID); err != nil {
			return givingErr(path, a.GID, err)
		}
	}
	return os.Chmod(path, mode)
}

// gidOf is the group owning a file, -1 when unknown.
func gidOf(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Gid)
	}
	return -1
}

// gid is the group to give the key, -1 for none.
func (a Access) gid() int {
	if a.Group {
		return a.GID
	}
	return -1
}
