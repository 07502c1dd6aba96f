package system

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// provision runs as root and creates its directories 0700, tightens them
// and replaces the links in them. Pointed at a directory that is not its
// own (pki_dir = "/etc/pki" with a ca.pem in it), it used to chmod that
// directory 0700 and replace ca.pem by a link into its generations: the
// other files' contents and modes were lost. Pointed at nginx's
// /etc/nginx/ssl holding key.pem and cert.pem, it took them over as "a
// credential set". ClaimDir is the one rule: a directory is provision's
// when provision made it, and only then. It writes a mark (OwnMark) in
// every directory it creates; a directory without one is provision's only
// when it is empty (what systemd's StateDirectory= or an installer makes
// for it) or holds what an earlier provision, which wrote no mark, leaves:
// a generation and its current link, a record of its own that parses as
// one, its run lock. Another program's key and certificate are not that,
// whatever their names. Anything else is refused before anything in it
// changes.

// OwnMark is the file provision writes into each directory it creates or
// claims (state_dir, pki_dir): the proof, for every later run, that the
// directory is its own.
const OwnMark = ".provision-dir"

// ownMarkText is the mark's content, which says what it is to a person.
const ownMarkText = "provision created this directory and keeps only its own files in it: docs/configuration.md, \"Files and modes written\".\n"

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
// already holds files it did not write, or that provision did not make it,
// and so is not its own.
type ForeignDirError struct {
	Path    string
	Foreign []string // up to maxForeign entries, each "name (why)"
	Count   int      // how many entries are foreign
	// NotMade: every entry has one of provision's names, but provision did
	// not make the directory (no OwnMark, nothing an earlier provision
	// leaves); Foreign then lists what it holds.
	NotMade bool
}

const maxForeign = 4

func (e *ForeignDirError) Error() string {
	more := ""
	if n := e.Count - len(e.Foreign); n > 0 {
		more = fmt.Sprintf(" and %d more", n)
	}
	if e.NotMade {
		return fmt.Sprintf("%s is not provision's own directory: provision did not create it (it holds no %s, and %s%s is not what an earlier provision leaves); provision does not take over a directory it did not create (it would make it 0700 and replace files in it)",
			e.Path, OwnMark, strings.Join(e.Foreign, ", "), more)
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
// followed there, for another volume: Host.ClaimDir judges that link and
// the parents by the path rule first). A directory is provision's when
// provision made it: it holds OwnMark, or it is empty, or it holds what an
// earlier provision (which wrote no mark) leaves, and in every case
// nothing but provision's own layout: the records and run lock of
// state_dir, its done/ and tasks/ directories, pki_dir's generations,
// current/previous links and stable names, provision's temp files, a
// damaged record it kept aside, and subdirectories (or links to them) that
// are themselves provision's, such as a pki_dir inside state_dir: in a
// directory without the mark, one only when it is marked, holds what an
// earlier provision leaves, or is named in nested (the configured pki_dir,
// which may be an empty volume), since an empty subdirectory or a link to
// one is just as likely another program's (an app's cache/ and spool/). key.pem,
// cert.pem and ca.pem as plain files count only in a marked directory, as
// a pair (key.pem and cert.pem both there): elsewhere they are another
// program's credentials, never taken over.
//
// Anything else is a *ForeignDirError, returned before anything changes.
// A name of provision's that is the wrong kind of file (a FIFO or link at
// renew.json, a link at tasks/) is an *UnsafeFileError. The directory
// itself must belong to this process's user.
//
// With change false ClaimDir only judges (verify, renew --check): a
// missing directory is fine and nothing is created, marked or chmodded.
// With change true a missing directory is created 0700 (missing parents
// 0755, as a package manager would) and marked, an existing one must be
// writable (a read-only mount is named at the directory) and is marked if
// it was not, and one that group or others can write into is restricted
// to 0700 (DirState says so, for a warning).
// Only path itself is ever chmodded, never a parent.
func ClaimDir(path string, change bool, nested ...string) (DirState, error) {
	return claimDir(path, change, kernelResolve, nested, nil)
}

// marks is the marks a claim leaves to write (dirs), and then the new
// marks and their directories (files), written and made durable together
// in one wait (sync) instead of one wait each, at a time of the caller's
// choosing.
type marks struct {
	dirs  []string
	files []*os.File
}

// sync marks every directory left to it, then fsyncs every new mark and
// its directory at once, and closes them.
func (m *marks) sync() error {
	var errs []error
	for _, d := range m.dirs {
		errs = append(errs, markOwn(d, m))
	}
	m.dirs = nil
	if len(m.files) > 0 {
		errs = append(errs, SyncAll(m.files...))
	}
	for _, f := range m.files {
		f.Close()
	}
	m.files = nil
	return errors.Join(errs...)
}

// mark marks dir now (later nil), or leaves it to later.
func mark(dir string, later *marks) error {
	if later == nil {
		return markOwn(dir, nil)
	}
	later.dirs = append(later.dirs, dir)
	return nil
}

// claimedHere is every directory this process claimed to write in, by the
// path it was claimed at, with the directory (device and inode) it was. A
// run claims state_dir before each of its writes there (the lock, the
// enroll-pending marker, the records), as every library that writes in it
// must, and pki_dir before the set is written: a claim of a directory this
// process already claimed, found again as that same directory, owned by
// this process's user and writable by nobody else, has nothing new to
// judge (only its owner could have put anything in it since) and returns
// at once. A directory replaced, relinked or opened up since is judged
// again from scratch. (Its owner alone could also remove it and make
// another that reuses its inode number: that is provision's own user, not
// what a claim guards against.)
var claimedHere = &claimed{dirs: map[string]fileID{}}

type fileID struct{ dev, ino uint64 }

type claimed struct {
	mu   sync.Mutex
	dirs map[string]fileID
}

// remember records path as claimed, as the directory it is now.
func (c *claimed) remember(path string) {
	st, err := os.Lstat(path)
	if err != nil {
		return
	}
	if id, ok := ownOnly(st); ok {
		c.mu.Lock()
		c.dirs[path] = id
		c.mu.Unlock()
	}
}

// same says whether path (whose Lstat is st) is still the directory
// claimed at it, and still writable by its owner alone.
func (c *claimed) same(path string, st os.FileInfo) bool {
	id, ok := ownOnly(st)
	if !ok {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	was, ok := c.dirs[path]
	return ok && was == id
}

// ownOnly is st's identity when it is a directory (not a link) owned by
// this process's user that no one else can write into.
func ownOnly(st os.FileInfo) (fileID, bool) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || !st.IsDir() || st.Mode().Perm()&0o022 != 0 || int(sys.Uid) != os.Geteuid() {
		return fileID{}, false
	}
	return fileID{dev: uint64(sys.Dev), ino: sys.Ino}, true
}

// resolver turns the host path of a link in one of provision's directories
// into the host path of what it names.
type resolver func(string) (string, error)

// kernelResolve leaves a link to the kernel, as a process on the node sees
// it (Host.ClaimDir resolves inside --root instead).
func kernelResolve(p string) (string, error) { return p, nil }

func claimDir(path string, change bool, resolve resolver, nested []string, later *marks) (DirState, error) {
	st, err := os.Lstat(path)
	if err == nil && change && claimedHere.same(path, st) {
		return DirState{}, nil
	}
	s, err := judgeClaim(path, st, err, change, resolve, nested, later)
	if err == nil && change {
		claimedHere.remember(path)
	}
	return s, err
}

// judgeClaim is claimDir's judgement of path (st and err its Lstat).
func judgeClaim(path string, st os.FileInfo, err error, change bool, resolve resolver, nested []string, later *marks) (DirState, error) {
	var s DirState
	if errors.Is(err, os.ErrNotExist) {
		if !change {
			return s, nil
		}
		return createPrivateDir(path, resolve, nested, later)
	}
	if err != nil {
		return s, err
	}
	if st, err = ownDirAt(path, st); err != nil {
		return s, err
	}
	v, err := judgeDir(path, judging{top: true, resolve: resolve, nested: nested})
	if err != nil {
		return s, err
	}
	s.WasMode = st.Mode().Perm()
	if !change {
		return s, nil
	}
	// A directory provision is about to write into must take writes: a
	// read-only mount is named here, at the directory, rather than at the
	// first file some later step tries to create in it.
	if err := syscall.Access(path, 2 /* W_OK */); err != nil {
		return s, fmt.Errorf("%s is not writable: %w", path, err)
	}
	if !v.marked {
		if err := mark(path, later); err != nil {
			return s, err
		}
		s.Marked = true
	}
	s.Tightened, err = restrictOpenDir(path, s.WasMode)
	return s, err
}

// ClaimDir is the package's ClaimDir for the node path p as the config
// names it: the directories on the way, and a link at p itself, are judged
// first by the path rule for provision's own directories (Host.Chase with
// Own: nothing on the way another user can write). own are the node paths
// of provision's other directories as configured (state_dir, pki_dir): one
// directly inside p may be an unmarked, empty subdirectory. Once claimed,
// Path maps p (and every path under it) to where it resolved, so every
// later step reaches the directory that was judged.
func (h *Host) ClaimDir(p string, change bool, own ...string) (DirState, error) {
	return h.claimDir(p, change, own, nil)
}

// ClaimDirs is ClaimDir for each of paths in turn (each a directory of
// provision's; own as for ClaimDir), stopping at the first refused, whose
// index it returns with the error. It creates what is missing, judges and
// tightens, but leaves the marks to durable (nil when none is needed),
// which writes them and fsyncs them with their directories in one wait:
// the caller overlaps it with other work (a run does it while it reaches
// the CA: pipeline.Options.Durable). Until it returns, a directory may
// lack its mark, or hold it torn, beside whatever the run wrote there
// meanwhile: a directory holding provision's lock, records or generations
// is provision's by them (ClaimDir takes them as an earlier provision's
// layout), and a torn mark is written again by the next run (hasMark), so
// a run starting meanwhile or after a power cut claims it all the same.
func (h *Host) ClaimDirs(paths []string, change bool, own ...string) (states []DirState, failed int, durable func() error, err error) {
	later := &marks{}
	for i, p := range paths {
		s, err := h.claimDir(p, change, own, later)
		if err != nil {
			later.sync() // what was claimed is marked, as one claim alone would
			return states, i, nil, err
		}
		states = append(states, s)
	}
	if len(later.dirs) == 0 {
		return states, -1, nil, nil
	}
	return states, -1, func() error {
		if err := later.sync(); err != nil {
			return fmt.Errorf("marking %s as provision's own: %w", strings.Join(paths, " and "), err)
		}
		return nil
	}, nil
}

func (h *Host) claimDir(p string, change bool, own []string, later *marks) (DirState, error) {
	d, name, err := h.Chase(p, ChaseOptions{FollowLast: true, Mkdir: change, Own: true})
	if errors.Is(err, fs.ErrNotExist) && !change {
		return DirState{}, nil // nothing there yet: nothing to judge
	}
	if err != nil {
		return DirState{}, err
	}
	defer d.Close()
	var nested []string
	for _, o := range own {
		if o = filepath.Clean("/" + o); filepath.Dir(o) == filepath.Clean("/"+p) {
			nested = append(nested, filepath.Base(o))
		}
	}
	s, err := claimDir(d.Join(name), change, h.resolveHost, nested, later)
	if err == nil {
		if h.claimed == nil {
			h.claimed = map[string]string{}
		}
		h.claimed[filepath.Clean("/"+p)] = filepath.Join(d.Node(), name)
	}
	return s, err
}

// resolveHost is Resolve for a host path under Root: a link in one of
// provision's directories (a pki_dir link inside state_dir) is judged
// where it leads inside --root, under the path rule.
func (h *Host) resolveHost(p string) (string, error) {
	node, err := h.Resolve("/" + strings.TrimPrefix(strings.TrimPrefix(p, h.Root), "/"))
	if err != nil {
		return "", err
	}
	return h.rawPath(node), nil
}

// markOwn writes OwnMark into dir, provision's own. The mark is created
// exclusively under its own name, not renamed into place: two runs
// starting together (cloud-init's and the unit's) both mark a new
// directory before either holds the lock, and the one that gets the lock
// sweeps temp files. The mark that is there is kept; only one a killed
// run left unfinished is written again.
//
// A new mark and its directory are fsynced at once, one wait for both: a
// power cut before that returns may leave the name with a torn or empty
// mark, which hasMark does not take for one (the directory is then judged
// unmarked, as before it was marked, and the next run writes the mark
// again), so nothing needs the file durable before its name.
//
// With later, a new mark and its directory are left to later's one wait.
func markOwn(dir string, later *marks) error {
	d, err := OpenDir(dir)
	if err != nil {
		return fmt.Errorf("marking %s as provision's own: %w", dir, err)
	}
	handed := false // d and the mark now later's to sync and close
	defer func() {
		if !handed {
			d.Close()
		}
	}()
	f, err := d.OpenRegular(OwnMark, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		if markWhole(d, markSettle) {
			return nil
		}
		err = d.WriteAtomic(OwnMark, []byte(ownMarkText), WriteOptions{Mode: 0o644}) // and syncs d
		if err != nil && markWhole(d, 0) {
			err = nil // another run wrote it again meanwhile (and may have swept this one's temp file)
		}
	} else if err == nil {
		handed, err = writeMark(f, d, later)
	}
	if err != nil {
		return fmt.Errorf("marking %s as provision's own: %w", dir, err)
	}
	return nil
}

// markSettle is how long a mark found not yet whole is given to become
// whole: two runs starting together (cloud-init's and the unit's) claim a
// new directory at once, and the one whose exclusive create lost finds
// the other's mark created but, for a few microseconds, not yet written.
// Taken for one a killed run left torn and written again, it raced the
// other run, which (holding the lock by then) swept its temp file. A mark
// still not whole after this was torn by a crash.
const markSettle = 50 * time.Millisecond

// markWhole says whether d holds the whole mark, waiting up to settle for
// one being written.
func markWhole(d *Dir, settle time.Duration) bool {
	deadline := time.Now().Add(settle)
	for {
		if b, _ := d.ReadRegular(context.Background(), OwnMark, 4096); string(b) == ownMarkText {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// writeMark fills the new mark f in d and makes both durable in one wait,
// or hands both to later's (handed: later closes them).
func writeMark(f *os.File, d *Dir, later *marks) (handed bool, err error) {
	_, err = f.Write([]byte(ownMarkText))
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil && later != nil {
		later.files = append(later.files, f, d.f)
		return true, nil
	}
	defer f.Close()
	if err != nil {
		return false, err
	}
	return false, SyncAll(f, d.f)
}

// MarkOwn writes OwnMark into dir, for tests that plant a directory of
// provision's as an earlier run would have left it.
func MarkOwn(dir string) error { return markOwn(dir, nil) }

// createPrivateDir creates path 0700, and its missing parents 0755, and
// marks it provision's.
func createPrivateDir(path string, resolve resolver, nested []string, later *marks) (DirState, error) {
	s := DirState{Created: true, Marked: true}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return DirState{}, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return DirState{}, fmt.Errorf("creating %s: %w", path, err)
	} else if err != nil {
		// Another run made it in between: judge it like any other.
		return claimDir(path, true, resolve, nested, later) // made by the other run: judged as it is now
	}
	// The umask may have taken bits off; 0700 exactly is the point.
	if err := os.Chmod(path, 0o700); err != nil {
		return s, fmt.Errorf("restricting %s to 0700: %w", path, err)
	}
	// A run killed before the mark leaves an empty directory, which the
	// next run claims (and marks) as its own.
	return s, mark(path, later)
}

// verdict is what judgeDir found in a directory of provision's.
type verdict struct {
	marked bool // it holds OwnMark
	made   bool // marked, or it holds what only an earlier provision leaves
}

// judgeDir checks every entry of dir against provision's layout, and that
// provision made dir (marked, empty, or an earlier provision's layout).
// j.top is false for a subdirectory judged as a nested pki_dir: its own
// subdirectories must then be generations.
func judgeDir(dir string, j judging) (verdict, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return verdict{}, fmt.Errorf("reading %s: %w", dir, err)
	}
	names := map[string]os.FileMode{}
	for _, e := range ents {
		names[e.Name()] = e.Type()
	}
	var v verdict
	if v.marked, err = hasMark(dir, names); err != nil {
		return v, err
	}
	foreign, held := &ForeignDirError{Path: dir}, &ForeignDirError{Path: dir, NotMade: true}
	v.made = v.marked
	for _, e := range ents {
		j.marked = v.marked
		ej, err := judgeEntry(dir, e.Name(), e.Type(), names, j)
		if err != nil {
			return v, err
		}
		v.made = v.made || ej.made
		note(foreign, e.Name(), ej.why)
		if ej.content {
			note(held, e.Name(), FileKind(e.Type()))
		}
	}
	switch {
	case foreign.Count > 0:
		return v, foreign
	case !v.made && held.Count > 0:
		return v, held
	}
	return v, nil
}

// note adds name (why) to e when why is not "".
func note(e *ForeignDirError, name, why string) {
	if why == "" {
		return
	}
	e.Count++
	if len(e.Foreign) < maxForeign {
		e.Foreign = append(e.Foreign, name+" ("+why+")")
	}
}

// hasMark says whether dir holds OwnMark; one that is not a regular file
// was planted.
func hasMark(dir string, names map[string]os.FileMode) (bool, error) {
	typ, ok := names[OwnMark]
	if !ok {
		return false, nil
	}
	if !typ.IsRegular() {
		return false, &UnsafeFileError{Path: filepath.Join(dir, OwnMark), Kind: FileKind(typ)}
	}
	f, err := OpenRegular(filepath.Join(dir, OwnMark), os.O_RDONLY, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, len(ownMarkText))
	n, _ := io.ReadFull(f, b)
	return string(b[:n]) == ownMarkText, nil
}

// entryJudgement is what one entry says about its directory.
type entryJudgement struct {
	why     string // why it is not provision's; "" when it is
	made    bool   // it shows an earlier provision made the directory
	content bool   // it is something a directory provision did not make must not hold
}

// judging is how a directory's entries are judged: top is false for a
// nested pki_dir, marked says the directory holds OwnMark, resolve finds
// what a nested link names, nested names the entries that are provision's
// own directories by configuration.
type judging struct {
	top, marked bool
	resolve     resolver
	nested      []string
}

// judgeEntry judges name (of type typ) in dir, or returns an
// *UnsafeFileError for one of provision's names of the wrong kind. names
// holds every entry of dir.
func judgeEntry(dir, name string, typ os.FileMode, names map[string]os.FileMode, j judging) (entryJudgement, error) {
	top, marked := j.top, j.marked
	path := filepath.Join(dir, name)
	isLink, isDir, isReg := typ&os.ModeSymlink != 0, typ.IsDir(), typ.IsRegular()
	switch {
	case name == OwnMark || isTemp(name):
		return entryJudgement{}, nil // a killed run's temp file: swept as provision's own
	case slices.Contains(ownFiles, name) || isAside(name):
		if !isReg {
			return entryJudgement{}, &UnsafeFileError{Path: path, Kind: FileKind(typ)}
		}
		// Proof is looked for only where the mark is missing.
		return entryJudgement{made: !marked && (isAside(name) || recordMade(path, name)), content: true}, nil
	case slices.Contains(ownDirs, name):
		if !isDir {
			return entryJudgement{}, &UnsafeFileError{Path: path, Kind: FileKind(typ), Why: fmt.Sprintf("is a %s where provision keeps its own directory; it does not write through it", FileKind(typ))}
		}
		return entryJudgement{content: true}, nil
	case special(typ) && (slices.Contains(genLinks, name) || slices.Contains(credFiles, name)):
		// A FIFO, device or socket at one of provision's names is nobody's
		// file: somebody planted it.
		return entryJudgement{}, &UnsafeFileError{Path: path, Kind: FileKind(typ)}
	case slices.Contains(genLinks, name):
		if !isLink {
			return entryJudgement{why: "a " + FileKind(typ) + " where provision keeps a link"}, nil
		}
		return entryJudgement{made: !marked && name == "current" && currentMade(path, names), content: true}, nil
	case slices.Contains(credFiles, name):
		return entryJudgement{why: judgeCredFile(typ, names, marked), content: true}, nil
	case strings.HasPrefix(name, genPrefix) && isDir:
		return entryJudgement{made: genName.MatchString(name), content: true}, nil
	case top && (isDir || isLink):
		// A subdirectory of provision's (made, or empty: a volume
		// mounted or linked there for pki_dir) holds nothing to take. A
		// link in a directory provision marked is root's own (pki_dir on
		// another volume), judged as pki_dir itself.
		if isLink && marked {
			return entryJudgement{made: true}, nil
		}
		why, made := judgeNested(path, isLink, j.resolve)
		if why == "" && !made && !marked && !slices.Contains(j.nested, name) {
			// Empty, unmarked, in a directory provision did not mark: as
			// likely another program's as an earlier provision's.
			why = nestedKind(isLink) + " provision did not create (no " + OwnMark + " in it, and it is not the configured pki_dir)"
		}
		return entryJudgement{why: why, made: made}, nil
	}
	return entryJudgement{why: "a " + FileKind(typ) + " provision did not write"}, nil
}

// genName is how credstore names a generation: gen-<UTC time>-<random>.
var genName = regexp.MustCompile(`^gen-[0-9]{8}T[0-9]{6}(\.[0-9]+)?Z-[0-9a-f]+$`)

// currentMade says whether the current link at path names a generation
// beside it, as every provision that published a set left it.
func currentMade(path string, names map[string]os.FileMode) bool {
	target, err := os.Readlink(path)
	return err == nil && !strings.Contains(target, "/") && genName.MatchString(target) && names[target].IsDir()
}

// recordKeys are a field each of provision's records always carries: an
// earlier provision's record parses as a JSON object with it.
var recordKeys = map[string]string{"receipt.json": "node_id", "renew.json": "node_id", "enroll-pending.json": "token_sha256",
	"key-exposed.json": "found", "last-failure.json": "ended_at"}

// recordMade says whether the record at path (named name) is one an
// earlier provision wrote: a record that parses as one, or the run lock
// holding nothing but a pid.
func recordMade(path, name string) bool {
	b, err := ReadRegular(context.Background(), path, 256<<10)
	if err != nil {
		return false
	}
	if name == ".lock" {
		pid := strings.TrimSpace(string(b))
		return len(b) <= 32 && (pid == "" || isDigits(pid))
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return false
	}
	_, ok := m[recordKeys[name]]
	return ok
}

// AsideMark is in the name of a record provision kept aside because it
// did not parse: "renew.json.damaged-20260101T000000Z".
const AsideMark = ".damaged-"

// isAside says whether name is a record provision kept aside.
func isAside(name string) bool {
	base, _, ok := strings.Cut(name, AsideMark)
	return ok && slices.Contains(ownFiles, base)
}

// special reports whether typ is neither a regular file, a directory nor a
// symbolic link.
func special(typ os.FileMode) bool {
	return !typ.IsRegular() && !typ.IsDir() && typ&os.ModeSymlink == 0
}

// judgeCredFile: a stable name is provision's as a link (into current/,
// whatever it names: a planted one is replaced), or, in a directory
// provision marked as its own, as a plain file of a credential set (a key
// and a certificate) an interrupted conversion left. Plain files anywhere
// else are another program's credentials.
func judgeCredFile(typ os.FileMode, names map[string]os.FileMode, marked bool) string {
	switch {
	case typ&os.ModeSymlink != 0:
		return ""
	case !typ.IsRegular():
		return "a " + FileKind(typ) + " where provision keeps a credential" // a directory
	case !marked:
		return "a regular file: another program's credential; provision keeps its own as links"
	}
	_, key := names["key.pem"]
	_, cert := names["cert.pem"]
	if key && cert {
		return ""
	}
	return "a regular file that is not part of a key and certificate pair"
}

// judgeNested says why a subdirectory (or a link to one) is not a
// directory of provision's, such as a pki_dir inside state_dir ("" when it
// is), and whether it shows provision made its parent too.
func judgeNested(path string, isLink bool, resolve resolver) (string, bool) {
	path, err := resolve(path)
	if err != nil {
		return "a link provision does not follow: " + err.Error(), false
	}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return "a link to nothing usable", false
	case !st.IsDir():
		return "a link to a " + FileKind(st.Mode()), false
	}
	what := nestedKind(isLink)
	var fe *ForeignDirError
	v, err := judgeDir(path, judging{resolve: resolve})
	switch {
	case errors.As(err, &fe) && fe.NotMade:
		return what + " provision did not create, holding " + strings.Join(fe.Foreign, ", "), false
	case errors.As(err, &fe):
		return what + " holding " + strings.Join(fe.Foreign, ", "), false
	case err != nil:
		return what + " provision cannot judge: " + err.Error(), false
	}
	return "", v.made
}

// nestedKind words a subdirectory, or a link to one.
func nestedKind(isLink bool) string {
	if isLink {
		return "a link to a directory"
	}
	return "a directory"
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
	return slices.Contains(ownFiles, base) || slices.Contains(credFiles, base) || slices.Contains(genLinks, base) || base == OwnMark
}
