// Package hosts owns the /etc/hosts override: a block between two marker
// lines that maps the node API hostname to the private control-plane IP.
//
// The incident began with nodes using a raw-IP URL that bypassed the ingress's
// Host routing. The fix is a hostname URL plus this override, so the block has
// to be right every time: Apply is a pure transform that keeps every byte
// outside the block, refuses to guess when only one marker is present, and
// refuses a stale line elsewhere that maps the same name to another address
// (glibc returns the first match, Go every match, so the two would disagree).
// Write then puts the result on disk atomically, or in place when the file is
// a bind mount that cannot be renamed over.
package hosts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/gpuaas/provision/internal/system"
)

// Markers delimit the managed block. They are matched after trimming spaces
// (and a trailing CR) and must not change: nodes already carry them.
const (
	BeginMarker = "# BEGIN provision managed block: do not edit, run 'provision hosts'"
	EndMarker   = "# END provision managed block"
)

// MaxSize caps the hosts file provision will edit; a real one is a few KiB.
const MaxSize = system.MaxHostsFile

// Entry is one address -> name mapping in the block.
type Entry struct {
	Name string
	IP   netip.Addr
}

// Error is a hosts file problem; Line is 1-based, or 0 when not tied to one.
type Error struct {
	Line int
	Msg  string
	// Outside marks a conflicting line outside the managed block, which
	// provision never edits: a person must.
	Outside bool
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return e.Msg
}

// Block is what Find learned about a file's managed block.
type Block struct {
	Present    bool
	Begin, End int // 0-based line indexes of the markers
	Entries    []Entry
}

type line struct {
	text string // without the line ending
	eol  string // "\n", "\r\n" or "" for a last line without one
}

func split(b []byte) []line {
	var out []line
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			out = append(out, line{text: string(b)})
			break
		}
		t, eol := b[:i], "\n"
		if bytes.HasSuffix(t, []byte("\r")) {
			t, eol = t[:len(t)-1], "\r\n"
		}
		out = append(out, line{text: string(t), eol: eol})
		b = b[i+1:]
	}
	return out
}

func join(ls []line) []byte {
	var buf bytes.Buffer
	for _, l := range ls {
		buf.WriteString(l.text)
		buf.WriteString(l.eol)
	}
	return buf.Bytes()
}

func checkText(b []byte) error {
	if len(b) > MaxSize {
		return &Error{Msg: fmt.Sprintf("file is %d bytes, larger than %d: refusing to edit something that is not a hosts file", len(b), MaxSize)}
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return &Error{Line: bytes.Count(b[:i], []byte("\n")) + 1, Msg: "contains a NUL byte: not a text hosts file, refusing to edit it"}
	}
	return nil
}

// Find locates the managed block. Exactly one BEGIN and one END, in that
// order, or none of either; anything else is an error, never a guess.
func Find(b []byte) (Block, error) {
	blk, ls, err := markers(b)
	if err != nil || !blk.Present {
		return blk, err
	}
	for i := blk.Begin + 1; i < blk.End; i++ {
		f := strings.Fields(strings.SplitN(ls[i].text, "#", 2)[0])
		if len(f) < 2 {
			continue
		}
		ip, err := netip.ParseAddr(f[0])
		if err != nil {
			return Block{}, &Error{Line: i + 1, Msg: fmt.Sprintf("managed block holds %q, which does not start with an IP address", ls[i].text)}
		}
		for _, n := range f[1:] {
			blk.Entries = append(blk.Entries, Entry{Name: strings.ToLower(n), IP: ip})
		}
	}
	return blk, nil
}

// markers finds the marker lines only, so that Remove works even when the
// block's content was hand-edited into something Find cannot parse.
func markers(b []byte) (Block, []line, error) {
	if err := checkText(b); err != nil {
		return Block{}, nil, err
	}
	ls := split(b)
	begin, end := -1, -1
	for i, l := range ls {
		switch strings.TrimSpace(l.text) {
		case BeginMarker:
			if begin >= 0 {
				return Block{}, nil, &Error{Line: i + 1, Msg: fmt.Sprintf("a second BEGIN marker (the first is on line %d); fix the block by hand or run 'provision hosts remove' after deleting one", begin+1)}
			}
			begin = i
		case EndMarker:
			if end >= 0 {
				return Block{}, nil, &Error{Line: i + 1, Msg: fmt.Sprintf("a second END marker (the first is on line %d)", end+1)}
			}
			end = i
		}
	}
	switch {
	case begin < 0 && end < 0:
		return Block{}, ls, nil
	case begin < 0:
		return Block{}, nil, &Error{Line: end + 1, Msg: "END marker without a BEGIN marker; refusing to guess where the managed block starts"}
	case end < 0:
		return Block{}, nil, &Error{Line: begin + 1, Msg: "BEGIN marker without an END marker; refusing to guess where the managed block ends"}
	case end < begin:
		return Block{}, nil, &Error{Line: end + 1, Msg: "END marker before the BEGIN marker"}
	}
	return Block{Present: true, Begin: begin, End: end}, ls, nil
}

func validate(entries []Entry) error {
	if len(entries) == 0 {
		return errors.New("no entries to write")
	}
	for _, e := range entries {
		if !e.IP.IsValid() {
			return fmt.Errorf("entry %q has no valid IP", e.Name)
		}
		if !plainField(e.IP.String()) {
			return fmt.Errorf("entry %q: address %q is not usable in a hosts file", e.Name, e.IP)
		}
		if !plainField(e.Name) {
			return fmt.Errorf("entry name %q is not a hostname", e.Name)
		}
	}
	return nil
}

// plainField reports whether s can be written as one hosts(5) field and read
// back unchanged: printable ASCII without spaces or '#'. Anything else (a
// vertical tab, a no-break space, a newline in an IPv6 zone) would split the
// field or inject a line.
func plainField(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '#' {
			return false
		}
	}
	return s != ""
}

// Apply returns b with the managed block holding exactly entries, and whether
// that differs from b. Lines outside the block are kept byte for byte,
// including their line endings; a new block uses the file's own line ending.
func Apply(b []byte, entries []Entry) ([]byte, bool, error) {
	if err := validate(entries); err != nil {
		return nil, false, err
	}
	blk, err := Find(b)
	if err != nil {
		return nil, false, err
	}
	ls := split(b)
	if err := conflicts(ls, blk, entries); err != nil {
		return nil, false, err
	}
	eol := "\n"
	if len(ls) > 0 && (ls[0].eol == "\r\n" || ls[0].eol == "" && strings.HasSuffix(ls[0].text, "\r")) {
		eol = "\r\n"
	}
	block := []line{{text: BeginMarker, eol: eol}}
	sorted := append([]Entry(nil), entries...)
	sort.SliceStable(sorted, func(i, j int) bool { return strings.ToLower(sorted[i].Name) < strings.ToLower(sorted[j].Name) })
	for _, e := range sorted {
		block = append(block, line{text: e.IP.String() + "\t" + strings.ToLower(e.Name), eol: eol})
	}
	block = append(block, line{text: EndMarker, eol: eol})

	var out []line
	if blk.Present {
		out = append(out, ls[:blk.Begin]...)
		last := ls[blk.End]
		block[len(block)-1].eol = last.eol // keep whether the file ended with a newline
		out = append(out, block...)
		out = append(out, ls[blk.End+1:]...)
	} else {
		out = append(out, ls...)
		if n := len(out); n > 0 && out[n-1].eol == "" {
			// A last line ending in a bare CR lacks only the LF; adding a
			// whole eol would give "\r\r\n", and a file read back after
			// this write must choose the same eol (idempotence).
			if t, ok := strings.CutSuffix(out[n-1].text, "\r"); ok {
				out[n-1] = line{text: t, eol: "\r\n"}
			} else {
				out[n-1].eol = eol
			}
		}
		out = append(out, block...)
	}
	nb := join(out)
	return nb, !bytes.Equal(nb, b), nil
}

// conflicts refuses a line outside the block that maps a managed name to a
// different address: resolvers would disagree about which one wins.
func conflicts(ls []line, blk Block, entries []Entry) error {
	want := map[string]netip.Addr{}
	for _, e := range entries {
		want[strings.ToLower(e.Name)] = e.IP
	}
	for i, l := range ls {
		if blk.Present && i >= blk.Begin && i <= blk.End {
			continue
		}
		ip, names, ok := system.HostsLine(l.text)
		if !ok {
			continue
		}
		for _, n := range names {
			if w, ok := want[strings.ToLower(n)]; ok && ip.Unmap() != w.Unmap() {
				return &Error{Line: i + 1, Outside: true, Msg: fmt.Sprintf("maps %s to %s outside the managed block, but the config wants %s; remove that line (resolvers disagree about which one wins)", n, ip, w)}
			}
		}
	}
	return nil
}

// Remove returns b without the managed block, and whether anything changed.
func Remove(b []byte) ([]byte, bool, error) {
	blk, ls, err := markers(b)
	if err != nil {
		return nil, false, err
	}
	if !blk.Present {
		return b, false, nil
	}
	out := append(append([]line(nil), ls[:blk.Begin]...), ls[blk.End+1:]...)
	return join(out), true, nil
}

// ReadFile reads the hosts file at path (already resolved to the file
// itself: see Write) without following a link or blocking on a FIFO, and
// refuses one larger than MaxSize.
func ReadFile(path string) ([]byte, error) {
	return system.ReadRegular(context.Background(), path, MaxSize)
}

// Strategy says how a file was written.
type Strategy string

// The write strategies.
const (
	Unchanged Strategy = "unchanged"
	Renamed   Strategy = "rename"   // temp file, fsync, rename, fsync dir
	InPlace   Strategy = "in-place" // bind-mounted file: rewritten through its inode
)

// Write replaces the hosts file at path with data. path must be the file
// itself: a symbolic link there is refused (resolve it to its target first,
// which is what provision does, so a symlinked /etc/hosts has its target
// edited and stays a link). It keeps the old file's
// mode, owner and SELinux label. If the file cannot be renamed over because
// it is a mount point (EBUSY, as in containers), it falls back to rewriting
// it in place and says so. Before replacing, it checks that the file still
// has the content it was computed from (another writer, such as cloud-init,
// may have changed it): old is what the caller read. hook marks the crash
// point before the rename.
func Write(path string, old, data []byte, hook system.Hook) (Strategy, error) {
	d, err := system.OpenDir(filepath.Dir(path))
	if err != nil {
		return "", err
	}
	defer d.Close()
	return writeIn(d, filepath.Base(path), old, data, hook, false)
}

// writeIn is Write for name in the directory d.
// With later set, a renamed file's directory is not fsynced: the caller
// does (ApplyToLater).
func writeIn(d *system.Dir, name string, old, data []byte, hook system.Hook, later bool) (Strategy, error) {
	if bytes.Equal(old, data) {
		return Unchanged, nil
	}
	path := d.Join(name)
	mode := os.FileMode(0o644)
	if st, err := d.Lstat(name); err == nil {
		if !st.Mode().IsRegular() {
			// Callers resolve a symlinked hosts file to its target first
			// (system.Host.Chase); a link here appeared since.
			return "", &system.UnsafeFileError{Path: path, Kind: system.FileKind(st.Mode())}
		}
		mode = st.Mode().Perm()
		cur, err := d.ReadRegular(context.Background(), name, MaxSize)
		if err != nil {
			return "", fmt.Errorf("re-reading %s: %w", path, err)
		}
		if !bytes.Equal(cur, old) {
			return "", fmt.Errorf("%s changed while provision was editing it; run again", path)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	} else if len(old) > 0 {
		return "", fmt.Errorf("%s was removed while provision was editing it; run again", path)
	}
	d.SweepTemp(name)
	err := d.WriteAtomic(name, data, system.WriteOptions{Mode: mode, KeepOwner: true, Hook: hook, Replaceable: later})
	if err == nil {
		return Renamed, nil
	}
	if errors.Is(err, system.ErrBusy) {
		if err := d.WriteInPlace(name, data); err != nil {
			return "", err
		}
		return InPlace, nil
	}
	return "", err
}

// File is the hosts file as provision edits it: its directory held open,
// reached under the path rule (system.Host.Chase: a symlinked hosts file is
// followed to its target, inside --root, only when root owns the link and
// only root can write the directory holding it), and its name there.
type File struct {
	dir  *system.Dir
	name string
	// Node is the file edited, as a node path with every link resolved.
	Node string
}

// Open opens the hosts file at the node path file on host for an edit;
// create makes its missing directories (0755).
func Open(host *system.Host, file string, create bool) (*File, error) {
	d, name, err := host.Chase(file, system.ChaseOptions{FollowLast: true, Mkdir: create})
	if err != nil {
		return nil, err
	}
	return &File{dir: d, name: name, Node: filepath.Join(d.Node(), name)}, nil
}

// Close releases the file's directory.
func (f *File) Close() error { return f.dir.Close() }

// Read is ReadFile for the file.
func (f *File) Read() ([]byte, error) {
	return f.dir.ReadRegular(context.Background(), f.name, MaxSize)
}

// Write is Write for the file.
func (f *File) Write(old, data []byte, hook system.Hook) (Strategy, error) {
	return writeIn(f.dir, f.name, old, data, hook, false)
}

// ErrNoBlock says the file has no managed block.
var ErrNoBlock = errors.New("no provision managed block")

// DiffError says the managed block maps other names or addresses than the
// config; Diffs are sorted, one per name.
type DiffError struct{ Diffs []string }

func (e *DiffError) Error() string {
	return "the managed block differs from the config: " + strings.Join(e.Diffs, "; ")
}

// Check is the one answer to "does this hosts file carry the override the
// config wants?", for verify, for 'provision hosts show|check' and, by
// construction, for Apply (which writes exactly what Check accepts). It
// returns nil, ErrNoBlock, a *DiffError, or the *Error of a malformed file
// or of a line outside the block that maps a managed name elsewhere.
func Check(b []byte, want []Entry) error {
	if err := checkText(b); err != nil {
		return err
	}
	blk, err := Find(b)
	if err != nil {
		return err
	}
	if err := conflicts(split(b), blk, want); err != nil {
		return err
	}
	if !blk.Present {
		return ErrNoBlock
	}
	got := map[string]netip.Addr{}
	for _, e := range blk.Entries {
		got[strings.ToLower(e.Name)] = e.IP
	}
	wantM := map[string]netip.Addr{}
	for _, e := range want {
		wantM[strings.ToLower(e.Name)] = e.IP
	}
	var diffs []string
	for n, ip := range wantM {
		if g, ok := got[n]; !ok {
			diffs = append(diffs, n+" missing")
		} else if g != ip {
			diffs = append(diffs, fmt.Sprintf("%s -> %s, want %s", n, g, ip))
		}
	}
	for n := range got {
		if _, ok := wantM[n]; !ok {
			diffs = append(diffs, n+" is not in the config")
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return &DiffError{Diffs: diffs}
	}
	return nil
}

// EntriesOf turns a name -> address map (the config's [[hosts]]) into
// entries, sorted by name.
func EntriesOf(m map[string]netip.Addr) []Entry {
	es := make([]Entry, 0, len(m))
	for n, ip := range m {
		es = append(es, Entry{Name: n, IP: ip})
	}
	sort.Slice(es, func(i, j int) bool { return es[i].Name < es[j].Name })
	return es
}

// ApplyTo writes the managed block for entries into file, a path on host.
// A hosts file that is a symbolic link is edited at its target, resolved
// inside --root under the path rule (Open), so the link stays a link and
// --root stays a sandbox.
func ApplyTo(host *system.Host, file string, entries []Entry) (Strategy, error) {
	s, sync, err := ApplyToLater(host, file, entries)
	if err == nil && sync != nil {
		if err = sync(); err != nil {
			return "", fmt.Errorf("writing %s: %w", file, err)
		}
	}
	return s, err
}

// ApplyToLater is ApplyTo leaving the last wait to the caller: the file is
// written, fsynced and renamed into place (never seen torn), and sync, when
// not nil, fsyncs its directory, which makes the rename durable, and
// releases it. Until sync returns, a power cut may bring back the previous
// file, whole. bootstrap runs sync while it talks to the CA and waits for it
// before anything is published.
func ApplyToLater(host *system.Host, file string, entries []Entry) (s Strategy, sync func() error, err error) {
	f, err := Open(host, file, true)
	if err != nil {
		return "", nil, fmt.Errorf("resolving %s: %w", file, err)
	}
	defer func() {
		if sync == nil {
			f.Close()
		}
	}()
	c, err := plan(f, file, entries)
	if err != nil {
		return "", nil, err
	}
	if !c.Changed {
		return Unchanged, nil, nil
	}
	if s, err = writeIn(f.dir, f.name, c.Old, c.New, host.Hook, true); err != nil {
		return "", nil, fmt.Errorf("writing %s: %w", file, err)
	}
	if s != Renamed {
		return s, nil, nil // rewritten in place: the file itself was fsynced
	}
	return s, func() error {
		defer f.Close()
		return f.dir.Sync()
	}, nil
}

// Change is what ApplyTo would do to a hosts file, decided without
// writing anything: the file's contents now and after.
type Change struct {
	Node     string // the file edited, as a node path with every link resolved ("" when its directory is missing)
	Old, New []byte
	Changed  bool
}

// PlanTo is ApplyTo's decision alone (bootstrap --dry-run shows it): the
// file reached and read as ApplyTo reaches it, under the path rule but
// creating nothing, and the managed block for entries applied in memory.
// A missing directory is a missing file: ApplyTo would create both.
func PlanTo(host *system.Host, file string, entries []Entry) (*Change, error) {
	f, err := Open(host, file, false)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return plan(nil, file, entries)
	case err != nil:
		return nil, fmt.Errorf("resolving %s: %w", file, err)
	}
	defer f.Close()
	return plan(f, file, entries)
}

// plan reads f (nil: no file yet) and applies entries to it in memory.
func plan(f *File, file string, entries []Entry) (*Change, error) {
	c := &Change{}
	if f != nil {
		old, err := f.Read()
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("reading %s: %w", file, err)
		}
		c.Node, c.Old = f.Node, old
	}
	var err error
	if c.New, c.Changed, err = Apply(c.Old, entries); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return c, nil
}

// BlockLines are the lines of b's managed block, markers included; none
// when it has no block (or an unreadable one).
func BlockLines(b []byte) []string {
	blk, ls, err := markers(b)
	if err != nil || !blk.Present {
		return nil
	}
	var out []string
	for _, l := range ls[blk.Begin : blk.End+1] {
		out = append(out, strings.TrimSuffix(l.text, "\r"))
	}
	return out
}

// Describe words a failure of Check or Apply for path: what is wrong and
// what to do, the one wording verify's hosts-block check, bootstrap and
// 'provision hosts' share.
func Describe(path string, err error) (msg, remedy string) {
	var de *DiffError
	var he *Error
	switch {
	case errors.Is(err, ErrNoBlock):
		return path + " has no provision managed block", "write the override: provision hosts apply (cloud-init's manage_etc_hosts may have rewritten the file)"
	case errors.As(err, &de):
		return fmt.Sprintf("the managed block in %s differs from the config: %s", path, strings.Join(de.Diffs, "; ")), "rewrite the override from the config: provision hosts apply"
	case errors.As(err, &he) && he.Outside:
		return fmt.Sprintf("%s: %v", path, err), "remove or correct that line by hand (provision edits only its block), then run provision hosts apply"
	case errors.Is(err, system.ErrUnsafePath):
		return fmt.Sprintf("%s: %v", path, err), "put the hosts file itself there, or a link root owns in a directory only root can write (and find out who changed it), then run provision hosts apply"
	case errors.Is(err, system.ErrUnsafeFile):
		return fmt.Sprintf("%s: %v", path, err), fmt.Sprintf("make %s a regular file again (and find out who replaced it), then run provision hosts apply", path)
	}
	return fmt.Sprintf("%s: %v", path, err), fmt.Sprintf("repair the managed block in %s by hand (keep one BEGIN and one END marker), then run provision hosts apply", path)
}
