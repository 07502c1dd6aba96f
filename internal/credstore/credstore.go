// Package credstore keeps the node's key, certificate chain and CA bundle as
// one unit on disk.
//
// A key that does not match its certificate bricks the node's identity as
// surely as a missing one, and a crash can land between any two writes. So a
// new set is written into a fresh generation directory, fsynced, validated
// (the key must match the leaf), and published by swapping a single symlink,
// "current". The stable paths the node-agent reads (key.pem, cert.pem,
// ca.pem) are symlinks through "current", so at every instant they name
// either the old complete set or the new complete set:
//
//	pki_dir/                 0700
//	  gen-<time>-<rand>/     0700  key.pem 0600, cert.pem 0644, ca.pem 0644
//	  current -> gen-...
//	  key.pem  -> current/key.pem
//	  cert.pem -> current/cert.pem
//	  ca.pem   -> current/ca.pem
//
// The key is 0600 and the directories 0700 whatever existed before: a
// previous tool's 0644 key.pem is replaced, not inherited.
//
// key.pem is a software key, or a TPM's wrapped key (TSS2 key file) when
// the key lives in the node's TPM (config key.store): either way it is
// written, validated and published the same, and package nodekey (the
// node-agent's own) reads and writes it, so both agree on what it holds.
package credstore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/google/renameio/v2"

	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/nodekey"
)

// File names inside pki_dir. They are the node-agent's contract.
const (
	KeyFile     = "key.pem"
	CertFile    = "cert.pem"
	CAFile      = "ca.pem"
	CurrentLink = "current"
	// PreviousLink names the generation "current" named before the last
	// Publish: the rollback target prune keeps.
	PreviousLink = "previous"
	genPrefix    = "gen-"
)

// Set is one complete identity.
type Set struct {
	Key     crypto.Signer
	Chain   []*x509.Certificate // leaf first
	Roots   []*x509.Certificate // CA bundle
	KeyMode os.FileMode         // as found on disk (Load only)
	DirMode os.FileMode         // pki_dir's mode as found (Load only)
	KeyGID  int                 // the key's group as found (Load only)
	DirGID  int                 // pki_dir's group as found (Load only)
	Dir     string              // the generation directory it was read from
}

// Leaf returns the node certificate.
func (s *Set) Leaf() *x509.Certificate {
	if s == nil || len(s.Chain) == 0 {
		return nil
	}
	return s.Chain[0]
}

// TLSCertificate returns the set as a client certificate (leaf +
// intermediates, as the node-agent presents it).
func (s *Set) TLSCertificate() tls.Certificate {
	c := tls.Certificate{PrivateKey: s.Key, Leaf: s.Leaf()}
	for _, x := range s.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// RootPool returns the CA bundle as a pool.
func (s *Set) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range s.Roots {
		p.AddCert(r)
	}
	return p
}

// ErrNotFound means there are no credentials at all (a fresh node).
var ErrNotFound = errors.New("no credentials installed")

// Load reads the current set from dir. It reads through "current" once, so a
// concurrent swap cannot hand it a key from one generation and a certificate
// from another. A pki_dir without "current" (written by something else) is
// read from the plain files.
//
// A TPM key (key.pem a TSS2 key file) signs in the TPM opts name; loading
// it does not touch the TPM.
func Load(dir string, opts ...nodekey.Option) (*Set, error) {
	st, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	src := dir
	if target, err := os.Readlink(filepath.Join(dir, CurrentLink)); err == nil {
		if !filepath.IsAbs(target) {
			target = filepath.Join(dir, target)
		}
		src = target
	}
	s := &Set{DirMode: st.Mode().Perm(), DirGID: gidOf(st), Dir: src}
	keyPath := filepath.Join(src, KeyFile)
	kst, err := os.Stat(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		if _, cerr := os.Stat(filepath.Join(src, CertFile)); errors.Is(cerr, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", dir, ErrNotFound)
		}
		return nil, fmt.Errorf("%s is missing while %s exists", filepath.Join(dir, KeyFile), CertFile)
	}
	if err != nil {
		return nil, err
	}
	s.KeyMode, s.KeyGID = kst.Mode().Perm(), gidOf(kst)
	keyPEM, err := readFile(keyPath)
	if err != nil {
		return nil, err
	}
	if s.Key, err = nodekey.ParseKey(keyPEM, opts...); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, KeyFile), err)
	}
	certPEM, err := readFile(filepath.Join(src, CertFile))
	if err != nil {
		return nil, err
	}
	if s.Chain, err = ParseCerts(certPEM); err != nil || len(s.Chain) == 0 {
		return nil, noCerts(filepath.Join(dir, CertFile), "certificate", certPEM, err)
	}
	caPEM, err := readFile(filepath.Join(src, CAFile))
	if err != nil {
		return nil, err
	}
	if s.Roots, err = ParseCerts(caPEM); err != nil || len(s.Roots) == 0 {
		return nil, noCerts(filepath.Join(dir, CAFile), "CA certificate", caPEM, err)
	}
	return s, nil
}

// noCerts says why the file at path (holding b) gave no certificate: it is
// empty, holds no PEM certificate, or one that does not parse (err).
func noCerts(path, what string, b []byte, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("%s: a %s in it does not parse: %w", path, what, err)
	case len(bytes.TrimSpace(b)) == 0:
		return fmt.Errorf("%s is empty: no %s in it", path, what)
	}
	return fmt.Errorf("%s holds no PEM %s (no CERTIFICATE block)", path, what)
}

// MaxFile bounds each of key.pem, cert.pem and ca.pem: a key is a few
// hundred bytes, a chain or a bundle of roots a few KiB.
const MaxFile = 1 << 20

// readFile reads one credential file the careful way: as a regular file,
// without following a link at it or blocking on a FIFO, and within MaxFile.
// Its errors name the file.
func readFile(path string) ([]byte, error) {
	return system.ReadRegular(context.Background(), path, MaxFile)
}

// ParseCerts parses every CERTIFICATE block in b.
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Key stores, as KeyStore names them.
const (
	StoreFile = "file"
	StoreTPM  = "tpm"
)

// KeyStore says where the set's key is: StoreTPM for a key in a TPM
// (key.pem a TSS2 key file), StoreFile for a software key.
func (s *Set) KeyStore() string {
	if _, ok := s.Key.(*nodekey.TPMKey); ok {
		return StoreTPM
	}
	return StoreFile
}

// KeyMatches reports whether the key is the leaf's private key.
func (s *Set) KeyMatches() bool {
	leaf := s.Leaf()
	if leaf == nil || s.Key == nil {
		return false
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(s.Key.Public())
}

// EncodeCerts PEM-encodes certificates in order.
func EncodeCerts(cs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range cs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// Save publishes s as the current set in dir and returns the generation
// directory. now names the generation. It is SaveAside then Publish.
// hook is called between the steps with the step's name (crash points).
func Save(dir string, s *Set, now time.Time, hook system.Hook) (string, error) {
	gen, err := SaveAside(dir, s, now, hook)
	if err != nil {
		return "", err
	}
	return gen, Publish(dir, gen, hook)
}

// SaveAside writes s into a new, complete, validated generation directory
// under dir without publishing it: "current" and the stable links still
// name the old set, so nothing the node-agent reads changes. renew proves
// the new set from there before Publish. An unpublished generation is kept
// (for diagnosis) until the next successful publish prunes it.
func SaveAside(dir string, s *Set, now time.Time, hook system.Hook) (string, error) {
	return SaveAsideFor(dir, s, now, hook, RootOnly)
}

// SaveAsideFor is SaveAside with the key readable as a allows: with a key
// group, the key is 0640 and pki_dir and the generation 0750, that group's.
func SaveAsideFor(dir string, s *Set, now time.Time, hook system.Hook, a Access) (string, error) {
	if !s.KeyMatches() {
		return "", errors.New("refusing to save: the key does not match the certificate")
	}
	keyPEM, err := nodekey.MarshalKey(s.Key)
	if err != nil {
		return "", fmt.Errorf("encoding key: %w", err)
	}
	// pki_dir must be provision's own before anything in it is replaced:
	// a directory holding somebody else's files is refused, not taken over.
	if _, err := system.ClaimDir(dir, true); err != nil {
		return "", err
	}
	if err := a.Give(dir, a.DirMode(), true); err != nil {
		return "", err
	}
	Sweep(dir)

	var rnd [4]byte
	rand.Read(rnd[:])
	name := fmt.Sprintf("%s%s-%s", genPrefix, now.UTC().Format("20060102T150405.000000000Z"), hex.EncodeToString(rnd[:]))
	tmp := filepath.Join(dir, system.TempPrefix+name)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return "", fmt.Errorf("creating %s: %w", tmp, err)
	}
	if err := a.Give(tmp, a.DirMode(), false); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	files := []setFile{
		{KeyFile, keyPEM, a.KeyMode(), a},
		{CertFile, EncodeCerts(s.Chain), 0o644, RootOnly},
		{CAFile, EncodeCerts(s.Roots), 0o644, RootOnly},
	}
	if err := writeSet(tmp, files, hook); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	// Validate what is on disk, not what is in memory.
	if _, err := nodekey.LoadX509KeyPair(filepath.Join(tmp, CertFile), filepath.Join(tmp, KeyFile)); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("the written key and certificate do not load as a pair: %w", err)
	}
	gen := filepath.Join(dir, name)
	if err := os.Rename(tmp, gen); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("publishing %s: %w", gen, err)
	}
	if err := system.SyncDir(dir); err != nil {
		return "", err
	}
	hook.At("generation ready")
	return gen, nil
}

// Publish makes gen, a generation SaveAside wrote under dir, the current
// set by one symlink swap, after recording the generation it replaces as
// "previous" (kept as the rollback target). gen is validated again first:
// a generation that does not load as a matching pair is never published.
func Publish(dir, gen string, hook system.Hook) error {
	name := filepath.Base(gen)
	if filepath.Dir(gen) != filepath.Clean(dir) || !strings.HasPrefix(name, genPrefix) {
		return fmt.Errorf("refusing to publish %s: not a generation of %s", gen, dir)
	}
	if _, err := nodekey.LoadX509KeyPair(filepath.Join(gen, CertFile), filepath.Join(gen, KeyFile)); err != nil {
		return fmt.Errorf("refusing to publish %s: %w", gen, err)
	}
	// On a first install the stable links are made before "current", so
	// that the one fsync below makes both durable. Until "current" appears
	// they lead nowhere: to the node-agent, as to Load, no credentials, as
	// before this publish. Links that exist (or files of an older layout)
	// are replaced only once "current" names the new set.
	first := noStable(dir)
	if first {
		if err := linkStable(dir, false); err != nil {
			return err
		}
	}
	if prev, err := os.Readlink(filepath.Join(dir, CurrentLink)); err == nil && filepath.Base(prev) != name {
		if err := renameio.Symlink(filepath.Base(prev), filepath.Join(dir, PreviousLink)); err != nil {
			return fmt.Errorf("recording %s: %w", PreviousLink, err)
		}
	}
	if err := renameio.Symlink(name, filepath.Join(dir, CurrentLink)); err != nil {
		return fmt.Errorf("switching %s to %s: %w", CurrentLink, name, err)
	}
	if err := system.SyncDir(dir); err != nil {
		return err
	}
	hook.At("current switched")
	if !first {
		if err := linkStable(dir, true); err != nil {
			return err
		}
	}
	prune(dir, name)
	return nil
}

// LinkAhead makes a first install's stable links in dir (key.pem, cert.pem
// and ca.pem through "current") ahead of publish, while the run waits on
// the network, so that publish does not wait for their creation. Until
// "current" exists they lead nowhere, which Load, status and the
// node-agent read as what a node without a set has: no credentials; a run
// that publishes nothing leaves them so, as a crash between them and
// "current" always could. Publish's one fsync of dir makes them durable
// with "current". A dir holding any stable name is left as it is.
func LinkAhead(dir string) error {
	if !noStable(dir) {
		return nil
	}
	return linkStable(dir, false)
}

// noStable reports whether none of the stable paths exists in dir, as a
// link or otherwise.
func noStable(dir string) bool {
	for _, f := range []string{KeyFile, CertFile, CAFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			return false
		}
	}
	return true
}

// LoadGeneration reads the set in one generation directory (as SaveAside
// wrote it), for proving it before it is published.
func LoadGeneration(gen string) (*Set, error) {
	return Load(gen)
}

// linkStable points key.pem, cert.pem and ca.pem through "current", and
// fsyncs dir when it changed one and sync is set.
func linkStable(dir string, sync bool) error {
	changed := false
	for _, f := range []string{KeyFile, CertFile, CAFile} {
		link := filepath.Join(dir, f)
		want := filepath.Join(CurrentLink, f)
		if got, err := os.Readlink(link); err == nil && got == want {
			continue
		}
		// Replaces a plain file left by an older layout (a 0644 key among
		// them) atomically with the link.
		if err := renameio.Symlink(want, link); err != nil {
			return fmt.Errorf("linking %s: %w", link, err)
		}
		changed = true
	}
	if !changed || !sync {
		return nil
	}
	return system.SyncDir(dir)
}

// setFile is one file of a generation directory.
type setFile struct {
	name string
	data []byte
	mode os.FileMode
	who  Access // the key's: its group, if any
}

// writeSet writes files into the new generation directory tmp, then makes
// them and the directory durable together: the three files and the
// directory are fsynced at once (one wait for the disk instead of four)
// and all before the directory is renamed into place.
func writeSet(tmp string, files []setFile, hook system.Hook) error {
	d, err := os.Open(tmp)
	if err != nil {
		return err
	}
	open := []*os.File{d}
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	for _, f := range files {
		fh, err := writeNew(filepath.Join(tmp, f.name), f.data, f.mode, f.who)
		if err != nil {
			return err
		}
		open = append(open, fh)
		hook.At("wrote " + f.name)
	}
	return system.SyncAll(open...)
}

// writeNew creates path with data, mode and, when a has a group, that
// group, and returns it open, not yet fsynced (writeSet does that).
func writeNew(path string, data []byte, mode os.FileMode, a Access) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode&0o700) // no one else before its group is set
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", path, err)
	}
	if err := a.giveFile(f, path, mode); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return f, nil
}

// Sweep removes what a killed Save left behind: unpublished generation
// directories and renameio's temporary links. A Save killed after it
// switched "current" but before it made the stable links is finished here
// (links created, old generations pruned): "current" only ever names a
// validated generation, and without the links the node-agent, which opens
// key.pem and cert.pem, would find no credentials while provision, which
// reads through "current", would think the node healthy.
func Sweep(dir string) {
	system.SweepTemp(dir, CurrentLink, PreviousLink, KeyFile, CertFile, CAFile, system.OwnMark)
	target, err := os.Readlink(filepath.Join(dir, CurrentLink))
	if err != nil {
		return
	}
	if _, err := os.Stat(filepath.Join(dir, target)); err != nil {
		return
	}
	if linkStable(dir, true) == nil {
		prune(dir, filepath.Base(target))
	}
}

// prune keeps the current generation, the one "previous" names (the
// rollback target; without that link, the newest one older than current),
// and the newest generation written after current (an unpublished set a
// failed renewal left for diagnosis); it removes the others.
func prune(dir, current string) {
	gens := Generations(dir)
	keep := map[string]bool{current: true}
	if p, err := os.Readlink(filepath.Join(dir, PreviousLink)); err == nil {
		keep[filepath.Base(p)] = true
	} else {
		for _, g := range gens {
			if g < current {
				keep[g] = false
			}
		}
		older := ""
		for _, g := range gens {
			if g < current {
				older = g
			}
		}
		if older != "" {
			keep[older] = true
		}
	}
	// An unpublished generation is told by being written after current (by
	// modification time: names follow a clock that may have gone back).
	if cst, err := os.Stat(filepath.Join(dir, current)); err == nil {
		newer, newest := "", cst.ModTime()
		for _, g := range gens {
			if st, err := os.Stat(filepath.Join(dir, g)); err == nil && !keep[g] && st.ModTime().After(newest) {
				newer, newest = g, st.ModTime()
			}
		}
		if newer != "" {
			keep[newer] = true
		}
	}
	for _, g := range gens {
		if !keep[g] {
			os.RemoveAll(filepath.Join(dir, g))
		}
	}
}

// Generations lists the generation directories in dir, oldest first.
func Generations(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var gens []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), genPrefix) {
			gens = append(gens, e.Name())
		}
	}
	sort.Strings(gens)
	return gens
}

// GiveTo gives pki_dir (dir), every generation directory in it and every
// key in them to a's group with a's modes (0750, 0640): a key group set on
// a node that enrolled without one is served without a new key. Nothing
// without a group: then FindLooseFor and Tighten restrict what is loose (a
// group taken away is an exposure). Run it after Tighten, so a key found
// readable by more than a allows is recorded as exposed first.
func GiveTo(dir string, a Access) error {
	if !a.Group {
		return nil
	}
	if err := a.Give(dir, a.DirMode(), true); err != nil {
		return err
	}
	for _, g := range Generations(dir) {
		gd := filepath.Join(dir, g)
		if err := a.Give(gd, a.DirMode(), false); err != nil {
			return err
		}
		if err := a.giveKey(filepath.Join(gd, KeyFile)); err != nil {
			return err
		}
	}
	return a.giveKey(filepath.Join(dir, KeyFile)) // a plain key.pem an older layout left
}

// giveKey gives the key at path, if it is a regular file there, a's mode
// and group; a link or anything else is left alone.
func (a Access) giveKey(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ELOOP) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return err
	}
	return a.giveFile(f, path, a.KeyMode())
}

// Loose is a path under pki_dir whose mode lets group or others in.
type Loose struct {
	Path string
	Mode os.FileMode // as found
	Want os.FileMode // 0700 for a directory, 0600 for a key
	Key  bool        // a private key: its contents may have been read
}

func (l Loose) String() string { return fmt.Sprintf("%s %04o -> %04o", l.Path, l.Mode, l.Want) }

// FindLoose lists what Tighten would restrict with the default access
// (FindLooseFor RootOnly).
func FindLoose(dir string) ([]Loose, error) { return FindLooseFor(dir, RootOnly) }

// FindLooseFor lists what Tighten would restrict: dir and every generation
// directory, and every private key in them (and a legacy key.pem in dir
// itself), that lets anyone in beyond what a allows (0700 and 0600; with a
// key group, 0750 and 0640 for that group only). Only real directories and
// regular files are listed: a symlink is never followed to its target.
func FindLooseFor(dir string, a Access) ([]Loose, error) {
	st, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Loose
	if l, loose := a.loose(dir, st, a.DirMode(), false); loose {
		out = append(out, l)
	}
	keys := []string{filepath.Join(dir, KeyFile)}
	for _, g := range Generations(dir) {
		gd := filepath.Join(dir, g)
		if fi, err := os.Lstat(gd); err == nil && fi.IsDir() {
			if l, loose := a.loose(gd, fi, a.DirMode(), false); loose {
				out = append(out, l)
			}
			keys = append(keys, filepath.Join(gd, KeyFile))
		}
	}
	for _, k := range keys {
		if fi, err := os.Lstat(k); err == nil && fi.Mode().IsRegular() {
			if l, loose := a.loose(k, fi, a.KeyMode(), true); loose {
				out = append(out, l)
			}
		}
	}
	return out, nil
}

// loose says whether path (fi) lets anyone in beyond a, and what to
// restrict it to: want when it belongs to a's group, else the root-only
// mode (a group other than the key group must not read it).
func (a Access) loose(path string, fi os.FileInfo, want os.FileMode, key bool) (Loose, bool) {
	if a.Allows(fi.Mode(), gidOf(fi), want) {
		return Loose{}, false
	}
	if !a.Group || gidOf(fi) != a.GID {
		want &^= 0o070
	}
	return Loose{Path: path, Mode: fi.Mode().Perm(), Want: want, Key: key && fi.Mode().Perm()&^want != 0}, true
}

// Tighten restricts every path FindLoose listed. A key found readable by
// others must not stay so for one more step, whatever the run then decides.
func Tighten(loose []Loose) error {
	for _, l := range loose {
		if err := os.Chmod(l.Path, l.Want); err != nil {
			return fmt.Errorf("restricting %s to %04o: %w", l.Path, l.Want, err)
		}
	}
	return nil
}

// Asides lists, newest first, the generations in dir that are neither
// current nor the rollback target: sets written by SaveAside and never
// published (a renewal whose proof failed, a run killed before Publish).
// One of them may hold a certificate the CA issued that is still good: a
// later run proves it again rather than asking the CA for another.
func Asides(dir string) []string {
	skip := map[string]bool{}
	for _, l := range []string{CurrentLink, PreviousLink} {
		if t, err := os.Readlink(filepath.Join(dir, l)); err == nil {
			skip[filepath.Base(t)] = true
		}
	}
	gens := Generations(dir)
	var out []string
	for i := len(gens) - 1; i >= 0; i-- {
		if !skip[gens[i]] {
			out = append(out, gens[i])
		}
	}
	return out
}

// Remove deletes the credentials from dir, as provision revoke does once
// they are revoked: first the stable names and "current" (the node-agent
// finds no credentials from then on, rather than a revoked set), then
// "previous", every generation and provision's temp files. Only
// provision's own names are touched; dir itself stays. It returns the
// names removed.
func Remove(dir string) ([]string, error) {
	var removed []string
	for _, name := range []string{KeyFile, CertFile, CAFile, CurrentLink, PreviousLink} {
		p := filepath.Join(dir, name)
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if err := os.Remove(p); err != nil { // a link, or a plain file of an older layout
			return removed, err
		}
		removed = append(removed, name)
	}
	if err := system.SyncDir(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return removed, err
	}
	for _, g := range Generations(dir) {
		if err := os.RemoveAll(filepath.Join(dir, g)); err != nil {
			return removed, err
		}
		removed = append(removed, g+"/")
	}
	system.SweepTemp(dir, CurrentLink, PreviousLink, KeyFile, CertFile, CAFile)
	if err := system.SyncDir(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return removed, err
	}
	return removed, nil
}
