package system

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// provision runs as root and creates its directories 0700, tightens them
// and replaces the links in them. Pointed at a directory that is not its
// own (pki_dir = "/etc/pki" with a ca.pem in it), it used to chmod that
// directory 0700 and replace ca.pem by a link into its generations: the
// other files' contents and modes were lost. ClaimDir is the one rule: a
// directory is provision's when it is missing (and then created), empty,
// or holds nothing but provision's own layout. Anything else is refused
// before anything in it changes.

// The names provision writes in its two directories. state_dir and pki_dir
// may be one directory, and pki_dir is by default inside state_dir, so
// both are judged against the same list (a name of one in the other is
// harmless: it is still provision's). The writers own the constants; the
// tests of internal/cli and tests/reliability check that this list and
// what a real run leaves agree.
var (
	// ownFiles are regular files: the run lock and the records in
	// state_dir.
	ownFiles = []string{".lock", "receipt.json", "enroll-pending.json", "key-exposed.json", "renew.json", "last-failure.json", "revoke.json"}
	// ownDirs are real directories in state_dir (a link there is refused:
	// it would send a done marker or a task anywhere).
	ownDirs = []string{"done", "tasks"}
	// credFiles are pki_dir's stable names: links into current/, or, as a
	// set, the plain files a previous tool (or an older provision) left.
	credFiles = []string{"key.pem", "cert.pem", "ca.pem"}
	// genLinks name generations.
	genLinks = []string{"current", "previous"}
)

// genPrefix starts the name of a generation directory in pki_dir.
const genPrefix = "gen-"

// ForeignDirError says that a directory provision would keep its files in
// already holds files it did not write, and so is not its own.
type ForeignDirError struct {
	Path    string
	Foreign []string // up to maxForeign entries, each "name (why)"
	Count   int      // how many entries are foreign
}

const maxForeign = 4

func (e *ForeignDirError) Error() string {
	more := ""
	if n := e.Count - len(e.Foreign); n > 0 {
		more = fmt.Sprintf(" and %d more", n)
	}
	return fmt.Sprintf("%s is not provision's own directory: it holds %s%s; provision does not take over a directory that holds files it did not write (it would make it 0700 and replace files in it)",
		e.Path, strings.Join(e.Foreign, ", "), more)
}

// ErrForeignDir matches every *ForeignDirError with errors.Is.
var ErrForeignDir = errors.New("not provision's own directory")

// Is makes errors.Is(err, ErrForeignDir) true.
func (e *ForeignDirError) Is(target error) bool { return target == ErrForeignDir }

// ClaimDir is the one rule for the directories provision keeps its files
// in (state_dir and pki_dir, as configured; a link to a directory is
// followed there, for another volume). A directory is provision's when
// it holds nothing but provision's own layout: the records and run lock of
// state_dir, its done/ and tasks/ directories, pki_dir's generations,
// current/previous links and stable names, provision's temp files, and
// subdirectories (or links to them) that are themselves only that, such as
// a pki_dir inside state_dir. key.pem, cert.pem and ca.pem as plain files
// count only as a credential set (key.pem and cert.pem both there): a
// lone ca.pem or cert.pem is somebody else's.
//
// Anything else is a *ForeignDirError, returned before anything changes.
// A name of provision's that is the wrong kind of file (a FIFO or link at
// renew.json, a link at tasks/) is an *UnsafeFileError. The directory
// itself must belong to this process's user.
//
// With change false ClaimDir only judges (verify, renew --check): a
// missing directory is fine and nothing is created or chmodded. With
// change true a missing directory is created 0700 (missing parents 0755,
// as a package manager would), an existing one must be writable (a
// read-only mount is named at the directory), and one of provision's that
// group or others can write into is restricted to 0700 (DirState says so,
// for a warning).
// Only path itself is ever chmodded, never a parent.
func ClaimDir(path string, change bool) (DirState, error) {
	var s DirState
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		if !change {
			return s, nil
		}
		return createPrivateDir(path)
	}
	if err != nil {
		return s, err
	}
	if st.Mode()&os.ModeSymlink != 0 {
		if st, err = os.Stat(path); err != nil {
			return s, fmt.Errorf("%s is a symbolic link to nothing usable: %w", path, err)
		}
	}
	if !st.IsDir() {
		return s, &UnsafeFileError{Path: path, Kind: FileKind(st.Mode()), Why: fmt.Sprintf("is a %s where provision needs its own directory", FileKind(st.Mode()))}
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return s, &UnsafeFileError{Path: path, Kind: "directory", Why: fmt.Sprintf("is owned by uid %d, not by provision's uid %d: another user could plant files in it", sys.Uid, os.Geteuid())}
	}
	if err := judgeDir(path, true); err != nil {
		return s, err
	}
	// A directory provision is about to write into must take writes: a
	// read-only mount is named here, at the directory, rather than at the
	// first file some later step tries to create in it.
	if change {
		if err := syscall.Access(path, 2 /* W_OK */); err != nil {
			return s, fmt.Errorf("%s is not writable: %w", path, err)
		}
	}
	s.WasMode = st.Mode().Perm()
	if change && s.WasMode&0o022 != 0 {
		if err := os.Chmod(path, 0o700); err != nil {
			return s, fmt.Errorf("restricting %s (mode %04o, writable by others) to 0700: %w", path, s.WasMode, err)
		}
		s.Tightened = true
	}
	return s, nil
}

// createPrivateDir creates path 0700, and its missing parents 0755.
func createPrivateDir(path string) (DirState, error) {
	s := DirState{Created: true}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return DirState{}, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return DirState{}, fmt.Errorf("creating %s: %w", path, err)
	} else if err != nil {
		// Another run made it in between: judge it like any other.
		return ClaimDir(path, true)
	}
	// The umask may have taken bits off; 0700 exactly is the point.
	if err := os.Chmod(path, 0o700); err != nil {
		return s, fmt.Errorf("restricting %s to 0700: %w", path, err)
	}
	return s, nil
}

// judgeDir checks every entry of dir against provision's layout. top is
// false for a subdirectory judged as a nested pki_dir: its own
// subdirectories must then be generations.
func judgeDir(dir string, top bool) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", dir, err)
	}
	names := map[string]os.FileMode{}
	for _, e := range ents {
		names[e.Name()] = e.Type()
	}
	foreign := &ForeignDirError{Path: dir}
	for _, e := range ents {
		why, err := judgeEntry(dir, e.Name(), e.Type(), names, top)
		if err != nil {
			return err
		}
		if why != "" {
			foreign.Count++
			if len(foreign.Foreign) < maxForeign {
				foreign.Foreign = append(foreign.Foreign, e.Name()+" ("+why+")")
			}
		}
	}
	if foreign.Count > 0 {
		return foreign
	}
	return nil
}

// judgeEntry says why name (of type typ) in dir is not provision's, "" when
// it is, or an *UnsafeFileError for one of provision's names of the wrong
// kind. names holds every entry of dir.
func judgeEntry(dir, name string, typ os.FileMode, names map[string]os.FileMode, top bool) (string, error) {
	path := filepath.Join(dir, name)
	isLink, isDir, isReg := typ&os.ModeSymlink != 0, typ.IsDir(), typ.IsRegular()
	switch {
	case isTemp(name):
		return "", nil // a killed run's temp file: swept as provision's own
	case slices.Contains(ownFiles, name):
		if !isReg {
			return "", &UnsafeFileError{Path: path, Kind: FileKind(typ)}
		}
		return "", nil
	case slices.Contains(ownDirs, name):
		if !isDir {
			return "", &UnsafeFileError{Path: path, Kind: FileKind(typ), Why: fmt.Sprintf("is a %s where provision keeps its own directory; it does not write through it", FileKind(typ))}
		}
		return "", nil
	case special(typ) && (slices.Contains(genLinks, name) || slices.Contains(credFiles, name)):
		// A FIFO, device or socket at one of provision's names is nobody's
		// file: somebody planted it.
		return "", &UnsafeFileError{Path: path, Kind: FileKind(typ)}
	case slices.Contains(genLinks, name):
		if !isLink {
			return "a " + FileKind(typ) + " where provision keeps a link", nil
		}
		return "", nil
	case slices.Contains(credFiles, name):
		return judgeCredFile(typ, names), nil
	case strings.HasPrefix(name, genPrefix) && isDir:
		return "", nil
	case top && (isDir || isLink):
		return judgeNested(path, isLink), nil
	}
	return "a " + FileKind(typ) + " provision did not write", nil
}

// special reports whether typ is neither a regular file, a directory nor a
// symbolic link.
func special(typ os.FileMode) bool {
	return !typ.IsRegular() && !typ.IsDir() && typ&os.ModeSymlink == 0
}

// judgeCredFile: a stable name is provision's as a link (into current/,
// whatever it names: a planted one is replaced), or as a plain file of a
// credential set, which needs a key and a certificate.
func judgeCredFile(typ os.FileMode, names map[string]os.FileMode) string {
	switch {
	case typ&os.ModeSymlink != 0:
		return ""
	case !typ.IsRegular():
		return "a " + FileKind(typ) + " where provision keeps a credential" // a directory
	}
	_, key := names["key.pem"]
	_, cert := names["cert.pem"]
	if key && cert {
		return ""
	}
	return "a regular file that is not part of a key and certificate pair"
}

// judgeNested says why a subdirectory (or a link to one) is not a
// directory of provision's, such as a pki_dir inside state_dir.
func judgeNested(path string, isLink bool) string {
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return "a link to nothing usable"
	case !st.IsDir():
		return "a link to a " + FileKind(st.Mode())
	}
	what := "a directory"
	if isLink {
		what = "a link to a directory"
	}
	var fe *ForeignDirError
	switch err := judgeDir(path, false); {
	case errors.As(err, &fe):
		return what + " holding " + strings.Join(fe.Foreign, ", ")
	case err != nil:
		return what + " provision cannot judge: " + err.Error()
	}
	return ""
}

// isTemp reports whether name is one of provision's temp files: its own
// prefix, or renameio's "." + a name of provision's + digits.
func isTemp(name string) bool {
	if strings.HasPrefix(name, TempPrefix) {
		return true
	}
	if !strings.HasPrefix(name, ".") {
		return false
	}
	base := strings.TrimRight(name[1:], "0123456789")
	if len(base) == len(name)-1 {
		return false
	}
	return slices.Contains(ownFiles, base) || slices.Contains(credFiles, base) || slices.Contains(genLinks, base)
}
