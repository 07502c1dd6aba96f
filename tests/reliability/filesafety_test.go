package reliability

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// outsideFiles is a directory outside every node root holding one file per
// planted link, and its snapshot: provision runs as root, so a link it
// followed would change one of them.
type outsideFiles struct {
	dir    string
	before snapshot
}

func newOutside(t *testing.T) *outsideFiles {
	t.Helper()
	o := &outsideFiles{dir: t.TempDir()}
	os.Mkdir(filepath.Join(o.dir, "a-dir"), 0o755)
	for _, name := range []string{"shadow", "a-dir/file"} {
		if err := os.WriteFile(filepath.Join(o.dir, name), []byte("precious "+name+"\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	o.before = takeSnapshot(t, o.dir)
	return o
}

func (o *outsideFiles) file() string { return filepath.Join(o.dir, "shadow") }

func (o *outsideFiles) check(t *testing.T) {
	t.Helper()
	after := takeSnapshot(t, o.dir)
	if l := lost(o.before, after); len(l) > 0 {
		t.Fatalf("a file outside the root changed: %v", l)
	}
	if len(after) != len(o.before) {
		t.Fatalf("a file appeared outside the root: %v -> %v", o.before, after)
	}
}

// TestSymlinkPlantedAtEveryWrittenPath plants, one path at a time, a
// symbolic link to a file (or directory) outside the root at every path
// provision writes, locks or removes in a real bootstrap against the
// in-process control plane, and proves that no file outside the root
// changes: a link where provision keeps its own state is refused with a
// message naming it (exit 21, or 12 for pki_dir), the credential links,
// temp files and the enrollment token's place are replaced or swept as
// provision's own, and a symlinked hosts file is edited at its target
// resolved inside the root.
func TestSymlinkPlantedAtEveryWrittenPath(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	type tc struct {
		name  string
		path  func(n *node) string // where the link goes, on the host
		dir   bool                 // link to the outside directory instead of the file
		code  int
		says  string // in the output when refused
		after func(t *testing.T, n *node, link string)
	}
	state := func(p string) func(n *node) string {
		return func(n *node) string { return filepath.Join(n.Files.StateDir, p) }
	}
	pki := func(p string) func(n *node) string {
		return func(n *node) string { return filepath.Join(n.Files.PKIDir, p) }
	}
	taskID := "task-planted"
	tests := []tc{
		{name: "lock", path: state(".lock"), code: 21, says: "symbolic link"},
		{name: "receipt", path: state("receipt.json"), code: 21, says: "symbolic link"},
		{name: "done marker", path: state("done/" + machineID), code: 21, says: "symbolic link"},
		{name: "done dir", path: state("done"), dir: true, code: 21, says: "symbolic link"},
		{name: "enroll-pending marker", path: state("enroll-pending.json"), code: 21, says: "symbolic link"},
		{name: "last-failure record", path: state("last-failure.json"), code: 21, says: "symbolic link"},
		{name: "task file", path: state("tasks/" + taskID + ".json"), code: 21, says: "symbolic link"},
		{name: "tasks dir", path: state("tasks"), dir: true, code: 21, says: "symbolic link"},
		{name: "receipt temp file", path: state(".receipt.json123456789"), code: 0},
		{name: "provision temp file", path: state(".provision-tmp-gen-x"), code: 0},
		{name: "task temp file", path: state("tasks/." + taskID + ".json42"), code: 0},
		{name: "key", path: pki("key.pem"), code: 0},
		{name: "cert", path: pki("cert.pem"), code: 0},
		{name: "bundle", path: pki("ca.pem"), code: 0},
		{name: "current generation", path: pki("current"), dir: true, code: 0},
		{name: "pki temp generation", path: pki(".provision-tmp-gen-y"), dir: true, code: 0},
		{name: "hosts file", path: func(n *node) string { return n.Path(n.Cfg.Paths.HostsFile) }, code: 0,
			after: func(t *testing.T, n *node, link string) {
				// The absolute target is taken under the root: the block is
				// there, and /etc/hosts is still the link.
				target, _ := os.Readlink(link)
				b, err := os.ReadFile(n.Path(target))
				if err != nil || !strings.Contains(string(b), "BEGIN provision managed block") {
					t.Errorf("the link's target inside the root has no block: %v %q", err, b)
				}
			}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := newOutside(t)
			n := newNode(t, cp, fmt.Sprintf("gpu-plant-%02d", i), nil)
			cp.API.QueueTask(n.ID, controlplane.Task{ID: taskID, Kind: "noop"})
			link := tt.path(n)
			target := out.file()
			if tt.dir {
				target = filepath.Join(out.dir, "a-dir")
			}
			os.MkdirAll(filepath.Dir(link), 0o700)
			// A link planted in provision's own directories, as an earlier
			// run made (and marked) them: a directory provision did not
			// make is refused before anything in it is looked at.
			for _, own := range []string{n.Files.StateDir, n.Files.PKIDir} {
				if strings.HasPrefix(link, own+"/") {
					if err := system.MarkOwn(own); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tt.name == "hosts file" {
				os.Remove(link)
			}
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			r := n.RunJSON("bootstrap")
			out.check(t)
			if r.Code != tt.code {
				t.Fatalf("exit %d, want %d\n%s", r.Code, tt.code, r)
			}
			if tt.code != 0 {
				rep := r.Report
				if !strings.Contains(rep.Summary, tt.says) || !strings.Contains(rep.Summary, filepath.Base(link)) || rep.Remedy == "" {
					t.Errorf("the refusal does not name %s and say why: %q / %q", link, rep.Summary, rep.Remedy)
				}
				if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
					t.Errorf("the planted link was removed or replaced: %v", err)
				}
			}
			if tt.after != nil {
				tt.after(t, n, link)
			}
			if tt.code == 0 {
				checkKeyModes(t, n.Files.PKIDir)
				// And once more, now that everything is provision's own.
				wantExit(t, n.bootstrap(), 0)
				out.check(t)
			}
			t.Logf("link at %s: exit %d, nothing outside the root changed", tt.name, r.Code)
		})
	}
}

// TestStateDirTightened: a state_dir that exists 0777 (any local user could
// plant links in it) is made 0700 with a warning; its parent, which
// provision did not create, keeps its mode.
func TestStateDirTightened(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	n := newNode(t, cp, "gpu-0777", nil)
	os.MkdirAll(n.Files.StateDir, 0o777)
	os.Chmod(n.Files.StateDir, 0o777)
	parent := filepath.Dir(n.Files.StateDir)
	os.Chmod(parent, 0o775)
	cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
	r := n.bootstrap()
	wantExit(t, r, 0)
	if st, _ := os.Stat(n.Files.StateDir); st.Mode().Perm() != 0o700 {
		t.Errorf("state_dir is %v, want 0700", st.Mode())
	}
	if st, _ := os.Stat(parent); st.Mode().Perm() != 0o775 {
		t.Errorf("the parent %s was chmodded to %v", parent, st.Mode())
	}
	if !strings.Contains(r.Stderr, "restricted it to 0700") || !strings.Contains(r.Stderr, "0777") {
		t.Errorf("no warning about the tightened state dir:\n%s", r.Stderr)
	}
}

// TestTokenFileFIFOAndOtherNonRegular: a FIFO as ca.token_file hung
// bootstrap forever, past the deadline and SIGTERM. A FIFO, a directory
// or a symbolic link there is refused before it is opened for reading:
// bootstrap returns at once with exit 20 naming the file.
func TestTokenFileFIFOAndOtherNonRegular(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	tests := []struct {
		name  string
		plant func(p, outside string) error
		kind  string
	}{
		{"FIFO", func(p, _ string) error { return syscall.Mkfifo(p, 0o600) }, "FIFO"},
		{"directory", func(p, _ string) error { return os.Mkdir(p, 0o700) }, "directory"},
		{"symlink", func(p, outside string) error { return os.Symlink(outside, p) }, "symbolic link"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := newOutside(t)
			n := &node{nodetest.New(t, cp, t.TempDir(), fmt.Sprintf("gpu-tok-%d", i), nodetest.NoToken(),
				nodetest.Configure(fastConfig), nodetest.MachineID(machineID))}
			tok := n.Path(n.Cfg.CA.TokenFile)
			os.MkdirAll(filepath.Dir(tok), 0o700)
			if err := tt.plant(tok, out.file()); err != nil {
				t.Fatal(err)
			}
			r := n.RunJSON("bootstrap")
			nodetest.WantFailure(t, r, 20, "enroll", "node")
			if r.Took > 10*time.Second {
				t.Errorf("took %s (deadline 20s): the token read waited", r.Took)
			}
			if s := r.Report.Summary; !strings.Contains(s, n.Cfg.CA.TokenFile) || !strings.Contains(s, tt.kind) {
				t.Errorf("summary does not name %s as a %s: %q", n.Cfg.CA.TokenFile, tt.kind, s)
			}
			out.check(t)
			t.Logf("token file is a %s: exit 20 after %s", tt.kind, r.Took.Round(time.Millisecond))
		})
	}
}

// TestSIGTERMEndsRun sends SIGTERM to the real binary while it waits (on a
// CA that accepts connections and never answers, and on another run's
// lock), and checks that it ends promptly with exit 143 and one JSON report
// saying it was interrupted.
func TestSIGTERMEndsRun(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	hold := controlplane.StartHoldServer(t)
	slowCA := func(c *controlplane.NodeConfig) {
		c.CA.URL = withPort(c.CA.URL, hold.Port())
		c.Bootstrap.Deadline = "60s"
		c.Bootstrap.RequestTimeout = "30s"
	}
	longDeadline := func(c *controlplane.NodeConfig) { c.Bootstrap.Deadline = "60s" }
	tests := []struct {
		name  string
		cfg   func(*controlplane.NodeConfig)
		setup func(t *testing.T, n *node)
	}{
		{"waiting on the CA", slowCA, nil},
		{"waiting on the lock", longDeadline, func(t *testing.T, n *node) {
			os.MkdirAll(n.Files.StateDir, 0o700)
			f, err := os.OpenFile(filepath.Join(n.Files.StateDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, cp, fmt.Sprintf("gpu-term-%d", i), tt.cfg)
			if tt.setup != nil {
				tt.setup(t, n)
			}
			cmd := exec.Command(nodetest.Binary, "bootstrap", "--format", "json", "--root", n.Root)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			time.Sleep(1500 * time.Millisecond)
			select {
			case err := <-done:
				t.Fatalf("the run ended before SIGTERM (%v):\n%s\n%s", err, stdout.String(), stderr.String())
			default:
			}
			sent := time.Now()
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("still running 15s after SIGTERM:\n%s", stderr.String())
			}
			took := time.Since(sent)
			code := cmd.ProcessState.ExitCode()
			if code != 143 {
				t.Fatalf("exit %d after SIGTERM, want 143 (state %v)\n%s\n%s", code, cmd.ProcessState, stdout.String(), stderr.String())
			}
			dec := json.NewDecoder(&stdout)
			var rep nodetest.Report
			if err := dec.Decode(&rep); err != nil {
				t.Fatalf("stdout is not a JSON report: %v", err)
			}
			if dec.Decode(new(any)) != io.EOF {
				t.Fatal("stdout holds more than one JSON document")
			}
			if rep.ExitCode == nil || *rep.ExitCode != 143 || rep.FailedLayer != "interrupted" || !strings.Contains(rep.Summary, "SIGTERM") {
				t.Errorf("report: %+v", rep)
			}
			n.NoTokenIn(stdout.String()+stderr.String(), "bootstrap after SIGTERM")
			t.Logf("SIGTERM %s: exit 143 after %s", tt.name, took.Round(time.Millisecond))
		})
	}
}
