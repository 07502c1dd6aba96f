package system

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tree builds entries under dir: "name" a regular file ("name=content"
// with that content), "name/" a directory, "name -> target" a symbolic
// link, "name|" a FIFO; each optionally followed by " @uid" or
// " @uid:gid" (its owner) and " %mode" (a directory's mode, octal, sticky
// bit included).
func tree(t *testing.T, dir string, entries ...string) {
	t.Helper()
	for _, e := range entries {
		e, uid, gid, mode := ownership(e)
		var err error
		name, target, link := strings.Cut(e, " -> ")
		switch {
		case link:
			os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
			err = os.Symlink(target, filepath.Join(dir, name))
		case strings.HasSuffix(e, "/"):
			err = os.MkdirAll(filepath.Join(dir, e), 0o755)
		case strings.HasSuffix(e, "|"):
			name = strings.TrimSuffix(e, "|")
			err = syscall.Mkfifo(filepath.Join(dir, name), 0o600)
		default:
			var content string
			var ok bool
			if name, content, ok = strings.Cut(e, "="); !ok {
				content = "content of " + e
			}
			os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
			err = os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
		}
		p := filepath.Join(dir, strings.TrimSuffix(name, "/"))
		if err == nil && mode != 0 {
			err = syscall.Chmod(p, mode) // raw: keeps the sticky bit
		}
		if err == nil && (uid != 0 || gid != 0) {
			err = os.Lchown(p, uid, gid)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// ownership takes the " @uid[:gid]" and " %mode" suffixes off a tree entry.
func ownership(e string) (string, int, int, uint32) {
	uid, gid, mode := 0, 0, uint32(0)
	for {
		i := strings.LastIndex(e, " ")
		if i < 0 || i+1 >= len(e) || (e[i+1] != '@' && e[i+1] != '%') {
			return e, uid, gid, mode
		}
		if e[i+1] == '@' {
			u, g, both := strings.Cut(e[i+2:], ":")
			uid, _ = strconv.Atoi(u)
			gid = uid
			if both {
				gid, _ = strconv.Atoi(g)
			}
		} else {
			m, _ := strconv.ParseUint(e[i+2:], 8, 32)
			mode = uint32(m)
		}
		e = e[:i]
	}
}

// digest is every file, link and mode under root, to prove nothing changed.
func digest(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, _ := os.Lstat(p)
		fmt.Fprintf(&b, "%s %v", p, st.Mode())
		switch {
		case st.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			b.WriteString(" -> " + l)
		case st.Mode().IsRegular():
			c, _ := os.ReadFile(p)
			fmt.Fprintf(&b, " %x", sha256.Sum256(c))
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

// TestClaimDir is issue 24 item 1 and issue 31 item 2: pki_dir =
// "/etc/pki" (a 0755 directory holding ca.pem and cert.pem) was made 0700
// and its ca.pem replaced by a link, and nginx's /etc/nginx/ssl holding
// key.pem and cert.pem was taken over as "a credential set". A directory
// is provision's only when provision made it (its mark, empty, or what an
// earlier provision leaves) and it holds nothing but provision's layout;
// anything else is refused before anything in it changes, naming what is
// foreign.
func TestClaimDir(t *testing.T) {
	const gen = "gen-20261206T000000.000000000Z-0a1b2c3d"
	mark := OwnMark + "=" + ownMarkText
	provisionState := []string{".lock=4242\n", "receipt.json", "renew.json", "enroll-pending.json", "key-exposed.json", "done/", "tasks/",
		"pki/" + gen + "/", "pki/current -> " + gen,
		"pki/key.pem -> current/key.pem", "pki/cert.pem -> current/cert.pem", "pki/ca.pem -> current/ca.pem", "pki/previous -> gen-x",
		".receipt.json123456", ".provision-tmp-gen-y/", "pki/.key.pem987"}
	tests := []struct {
		name    string
		entries []string
		link    bool     // the directory is a link to one holding entries
		nested  []string // entries that are provision's own directories by configuration (pki_dir)
		foreign []string // named in the refusal; nil: claimed
		unsafe  string   // an *UnsafeFileError naming this entry
	}{
		{name: "missing"},
		{name: "empty", entries: []string{}},
		{name: "provision's state and pki layout", entries: provisionState},
		{name: "marked, with records that do not parse", entries: []string{mark, "receipt.json", "renew.json=\x00\x01", "renew.json.damaged-20260101T000000Z"}},
		{name: "an earlier provision's state: a receipt that parses", entries: []string{"receipt.json={\"node_id\":\"gpu-1\"}", "tasks/", "done/"}},
		{name: "an earlier provision's state: its run lock", entries: []string{".lock=12345\n"}},
		// A power cut before the first run's one wait for both marks (and
		// their directories) ended: either mark may be torn, state_dir's and
		// the new pki_dir's inside it.
		{name: "torn marks in state_dir and in its pki_dir", entries: []string{OwnMark + "=", "pki/" + OwnMark + "=provis", ".lock=4242\n"}, nested: []string{"pki"}},
		{name: "torn marks, pki_dir's alone", entries: []string{mark, "pki/" + OwnMark + "="}, nested: []string{"pki"}},
		// The marks are made durable while the run reaches the CA: the
		// enroll-pending marker and a generation aside may be durable first.
		{name: "torn marks beside a durable marker and generation", entries: []string{OwnMark + "=", "enroll-pending.json={\"token_sha256\":\"ab\"}",
			"pki/" + OwnMark + "=", "pki/" + gen + "/"}, nested: []string{"pki"}},
		{name: "an earlier provision's pki_dir: a generation and current", entries: []string{gen + "/", "current -> " + gen, "key.pem -> current/key.pem"}},
		{name: "a marked directory with the pair an interrupted conversion left", entries: []string{mark, "key.pem", "cert.pem", "ca.pem"}},
		{name: "a previous tool's credential set", entries: []string{"key.pem", "cert.pem", "ca.pem"},
			foreign: []string{"key.pem (a regular file: another program's credential"}},
		{name: "nginx's key and certificate (issue 31)", entries: []string{"key.pem", "cert.pem"},
			foreign: []string{"cert.pem (a regular file: another program's credential", "key.pem ("}},
		{name: "a symlinked state_dir of provision's", entries: provisionState, link: true},
		{name: "a pki_dir inside state_dir under another name", entries: []string{"receipt.json", "creds/current -> " + gen, "creds/" + gen + "/"}},
		{name: "a pki_dir inside state_dir that is a link", entries: []string{"receipt.json", "pki -> /nonexistent"}, foreign: []string{"pki (a link to nothing usable)"}},
		{name: "an unmarked state_dir holding the configured pki_dir, empty", entries: []string{"pki/"}, nested: []string{"pki"}},
		{name: "an unmarked state_dir holding the configured pki_dir, marked", entries: []string{"receipt.json={\"node_id\":\"gpu-1\"}", "pki/" + OwnMark + "=" + ownMarkText}},
		{name: "a marked state_dir holding an empty subdirectory", entries: []string{mark, "pki/"}},
		{name: "another program's directory: empty subdirectories and a link (app/ with cache/, spool/, data)", entries: []string{"cache/", "spool/", "data -> cache"},
			foreign: []string{"cache (a directory provision did not create", "data (a link to a directory provision did not create", "spool ("}},
		{name: "an empty subdirectory that is not the configured pki_dir", entries: []string{"receipt.json={\"node_id\":\"gpu-1\"}", "cache/"}, nested: []string{"pki"},
			foreign: []string{"cache (a directory provision did not create"}},
		{name: "/etc/pki with ca.pem and cert.pem (the repro)", entries: []string{"ca.pem", "cert.pem"},
			foreign: []string{"ca.pem (a regular file: another program's credential", "cert.pem ("}},
		{name: "a lone ca.pem in a marked directory", entries: []string{mark, "ca.pem"}, foreign: []string{"ca.pem (a regular file that is not part of a key and certificate pair)"}},
		{name: "another program's single file with a name of provision's", entries: []string{"receipt.json={\"order\":7}"},
			foreign: []string{"provision did not create it", "receipt.json (regular file)"}},
		{name: "another program's queue: tasks/ and a lock", entries: []string{".lock=locked by worker", "tasks/", "tasks/job-1"},
			foreign: []string{"provision did not create it", ".lock (regular file)", "tasks (directory)"}},
		{name: "/etc/ssl", entries: []string{"certs/a.pem", "private/node.key", "openssl.cnf", "empty/"}, foreign: []string{"certs (a directory holding a.pem", "empty (a directory provision did not create", "openssl.cnf (a regular file", "private ("}},
		{name: "one foreign file among provision's", entries: append([]string{"notes.txt"}, provisionState...), foreign: []string{"notes.txt (a regular file provision did not write)"}},
		{name: "a symlinked state_dir of somebody else's", entries: []string{"db.sqlite"}, link: true, foreign: []string{"db.sqlite"}},
		{name: "a nested directory of somebody else's", entries: []string{"pki/key.pem -> current/key.pem", "pki/README"}, foreign: []string{"pki (a directory holding README"}},
		{name: "a regular file where current should be a link", entries: []string{"current"}, foreign: []string{"current (a regular file where provision keeps a link)"}},
		{name: "a FIFO at renew.json", entries: []string{"receipt.json", "renew.json|"}, unsafe: "renew.json"},
		{name: "a link at receipt.json", entries: []string{"receipt.json -> /etc/shadow"}, unsafe: "receipt.json"},
		{name: "a link at the mark", entries: []string{OwnMark + " -> /etc/shadow"}, unsafe: OwnMark},
		{name: "a link at tasks", entries: []string{"tasks -> /tmp"}, unsafe: "tasks"},
		{name: "a FIFO at key.pem", entries: []string{"key.pem|", "cert.pem"}, unsafe: "key.pem"},
		{name: "a FIFO at current", entries: []string{"current|"}, unsafe: "current"},
		{name: "a directory at key.pem", entries: []string{"key.pem/", "cert.pem"}, foreign: []string{"key.pem (a directory where provision keeps a credential)"}},
		{name: "many foreign entries are counted", entries: []string{"a", "b", "c", "d", "e", "f"}, foreign: []string{"and 2 more"}},
	}
	for _, tt := range tests {
		for _, change := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/change=%v", tt.name, change), func(t *testing.T) {
				base := t.TempDir()
				dir := filepath.Join(base, "var", "lib", "provision")
				if tt.entries != nil {
					target := dir
					if tt.link {
						target = filepath.Join(base, "volume")
					}
					os.MkdirAll(target, 0o755)
					tree(t, target, tt.entries...)
					os.Chmod(target, 0o777)
					if tt.link {
						os.MkdirAll(filepath.Dir(dir), 0o755)
						if err := os.Symlink(target, dir); err != nil {
							t.Fatal(err)
						}
					}
				}
				before := digest(t, base)
				s, err := ClaimDir(dir, change, tt.nested...)
				var fe *ForeignDirError
				var ue *UnsafeFileError
				switch {
				case tt.foreign != nil:
					if !errors.As(err, &fe) || !errors.Is(err, ErrForeignDir) {
						t.Fatalf("ClaimDir = %v, want a *ForeignDirError", err)
					}
					for _, f := range tt.foreign {
						if !strings.Contains(err.Error(), f) {
							t.Errorf("refusal %q does not name %q", err, f)
						}
					}
				case tt.unsafe != "":
					if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.unsafe) {
						t.Fatalf("ClaimDir = %v, want an *UnsafeFileError naming %s", err, tt.unsafe)
					}
				case err != nil:
					t.Fatalf("ClaimDir: %v", err)
				}
				after := digest(t, base)
				switch {
				case err != nil || !change:
					if after != before {
						t.Errorf("ClaimDir changed the tree:\n--- before\n%s--- after\n%s", before, after)
					}
				case tt.entries == nil:
					if st, serr := os.Stat(dir); serr != nil || st.Mode().Perm() != 0o700 || !s.Created {
						t.Errorf("missing dir: %v %v created=%v, want created 0700", st, serr, s.Created)
					}
				default:
					if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 || !s.Tightened || s.WasMode != 0o777 {
						t.Errorf("a 0777 directory of provision's: mode %v, state %+v; want tightened to 0700", st.Mode(), s)
					}
				}
				if b, _ := os.ReadFile(filepath.Join(dir, OwnMark)); err == nil && change && string(b) != ownMarkText {
					t.Errorf("a directory provision claimed holds no mark: %q", b)
				}
				if pst, _ := os.Stat(filepath.Dir(dir)); pst != nil && pst.Mode().Perm() != 0o755 {
					t.Errorf("the parent was chmodded to %v", pst.Mode())
				}
			})
		}
	}
}

// BenchmarkClaimDir is what the rule adds to every command: judging a
// bootstrapped state_dir (records, done/, tasks/, a pki_dir inside it with
// three generations and its links), without and with claiming it.
func BenchmarkClaimDir(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "provision")
	os.MkdirAll(dir, 0o700)
	for _, f := range []string{".lock", "receipt.json", "renew.json"} {
		os.WriteFile(filepath.Join(dir, f), []byte("{}"), 0o600)
	}
	for _, d := range []string{"done", "tasks", "pki/gen-1", "pki/gen-2", "pki/gen-3"} {
		os.MkdirAll(filepath.Join(dir, d), 0o700)
	}
	for l, target := range map[string]string{"current": "gen-3", "previous": "gen-2", "key.pem": "current/key.pem", "cert.pem": "current/cert.pem", "ca.pem": "current/ca.pem"} {
		os.Symlink(target, filepath.Join(dir, "pki", l))
	}
	for _, d := range []string{dir, filepath.Join(dir, "pki")} {
		if err := markOwn(d, nil); err != nil {
			b.Fatal(err)
		}
	}
	for _, change := range []bool{false, true} {
		b.Run(fmt.Sprintf("change=%v", change), func(b *testing.B) {
			for b.Loop() {
				if _, err := ClaimDir(dir, change); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestClaimDirs: the first run's two directories (pki_dir inside
// state_dir) are created and marked, both marks whole; a refused second
// directory is named by its index, and the first keeps its mark.
func TestClaimDirs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		plant   string // a foreign file planted in pki_dir first
		failed  int
		created []bool
	}{
		{name: "both new", failed: -1, created: []bool{true, true}},
		{name: "pki_dir elsewhere, refused", plant: "app.conf", failed: 1, created: []bool{true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			h, err := New(root)
			if err != nil {
				t.Fatal(err)
			}
			paths := []string{"/var/lib/provision", "/var/lib/provision/pki"}
			if tc.plant != "" {
				paths[1] = "/srv/pki"
				os.MkdirAll(filepath.Join(root, paths[1]), 0o700)
				os.WriteFile(filepath.Join(root, paths[1], tc.plant), []byte("x"), 0o600)
			}
			states, failed, durable, err := h.ClaimDirs(paths, true, paths...)
			if failed != tc.failed || (err == nil) != (tc.failed < 0) {
				t.Fatalf("failed at %d (%v), want %d", failed, err, tc.failed)
			}
			if (durable != nil) != (tc.failed < 0) {
				t.Fatalf("durable given %v, want it for a claim that marked both", durable != nil)
			}
			if durable != nil {
				if err := durable(); err != nil {
					t.Fatal(err)
				}
			}
			if len(states) != len(tc.created) {
				t.Fatalf("%d states, want %d", len(states), len(tc.created))
			}
			for i, want := range tc.created {
				if states[i].Created != want || !states[i].Marked {
					t.Errorf("%s: %+v, want created %v and marked", paths[i], states[i], want)
				}
				b, err := os.ReadFile(filepath.Join(root, paths[i], OwnMark))
				if err != nil || string(b) != ownMarkText {
					t.Errorf("%s: mark %q (%v), want it whole", paths[i], b, err)
				}
			}
		})
	}
}

// TestClaimDirOnce: a directory this process claimed to write in, found
// again as the same directory and still writable by its owner alone, is
// not judged again (a run claims state_dir before each write there); one
// opened up to others, or replaced by another directory, is judged anew
// and refused for what it now holds.
func TestClaimDirOnce(t *testing.T) {
	for _, tc := range []struct {
		name    string
		between func(t *testing.T, dir string)
		refused bool
	}{
		{name: "the same directory", between: func(*testing.T, string) {}},
		{name: "opened up to others", between: func(t *testing.T, dir string) {
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
		}, refused: true},
		{name: "replaced by another directory", between: func(t *testing.T, dir string) {
			if err := os.Rename(dir, dir+".old"); err != nil { // moved aside, a new one made
				t.Fatal(err)
			}
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
		}, refused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if _, err := ClaimDir(dir, true); err != nil {
				t.Fatal(err)
			}
			tc.between(t, dir)
			// Only the owner (or root) can put this here: in the same
			// directory, a claim has nothing new to judge.
			if err := os.WriteFile(filepath.Join(dir, "app.conf"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := ClaimDir(dir, true)
			if refused := errors.Is(err, ErrForeignDir); refused != tc.refused {
				t.Fatalf("second claim: %v; want refused %v", err, tc.refused)
			}
		})
	}
}

// TestMarkBeingWritten: two runs claim a new directory at once; the one
// whose exclusive create lost finds the other's mark created and not yet
// written. It waits for it rather than take it for a torn one and write it
// again (the other run, holding the lock by then, swept that rewrite's
// temp file: exit 21 in TestConcurrentRuns), and keeps the other's mark.
// A mark still torn after the wait is written again.
func TestMarkBeingWritten(t *testing.T) {
	for _, tc := range []struct {
		name      string
		writeIn   time.Duration // -1: never (a crash tore it)
		rewritten bool
	}{
		{name: "written a moment later", writeIn: 10 * time.Millisecond},
		{name: "torn by a crash", writeIn: -1, rewritten: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			mark := filepath.Join(dir, OwnMark)
			f, err := os.OpenFile(mark, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			before, _ := os.Stat(mark)
			done := make(chan struct{})
			go func() {
				defer close(done)
				defer f.Close()
				if tc.writeIn >= 0 {
					time.Sleep(tc.writeIn)
					f.Write([]byte(ownMarkText))
				}
			}()
			if err := markOwn(dir, nil); err != nil {
				t.Fatal(err)
			}
			<-done
			after, err := os.Stat(mark)
			if err != nil {
				t.Fatal(err)
			}
			if rewritten := !os.SameFile(before, after); rewritten != tc.rewritten {
				t.Errorf("mark rewritten %v, want %v", rewritten, tc.rewritten)
			}
			if b, _ := os.ReadFile(mark); string(b) != ownMarkText {
				t.Errorf("mark %q, want it whole", b)
			}
		})
	}
}
