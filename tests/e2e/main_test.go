// Package e2e runs the real provision binary against a real step-ca and a
// real mTLS node API (tests/controlplane), all on loopback, each node in its
// own throwaway --root.
//
// Why a built binary and not only cli.Run: cloud-init templates, systemd
// units and runbooks script against the process, so its exit codes, its
// stdout report and its stderr logs are the interface. A bug that only shows
// in the process (a flag default, a stray print, an exit code lost on the
// way out, a global set in a test binary but not in main) would pass an
// in-process test and fail on a node. TestMain builds ./cmd/provision once;
// every core case runs it as a subprocess with --root t.TempDir(), so
// nothing outside the temporary directories is read or written and no
// privileges are needed.
//
// Why a real CA: the failures this tool exists for (a token the CA burns on
// first use, a root that rotated under the nodes, a pinned fingerprint that
// no longer matches) only happen with step-ca's own behaviour. No case here
// replaces it.
//
// One control plane per test (per parallel subtest): starting one costs tens
// of milliseconds, faults and rotations stay local to their test, and no two
// enrollments ever reach the same step-ca at once. That last point matters
// under -race: step-ca v0.30.2's provisioner.Audiences.All appends to the
// shared Sign slice, a data race between concurrent token-authorised
// requests when the CA has more than one DNS name (as tests/controlplane's
// has). Within a test, concurrency on one CA is serialised by provision's
// own lock (see TestConcurrentBootstrapsEnrollOnce). Configs use a short
// bootstrap.deadline so a failing case cannot wait ten minutes. Every proof
// is a real long poll of at least one second (wait_timeout is whole
// seconds), so the cases spend most of their time waiting, not computing:
// unless -test.parallel is given, TestMain lets more of them wait at once
// than the machine has CPUs.
package e2e

import (
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

var (
	// moduleRoot is the directory holding go.mod.
	moduleRoot string
	// nodeSeq numbers node ids, so logs of parallel tests are told apart.
	nodeSeq atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	testenv.DefaultParallel(max(8, runtime.GOMAXPROCS(0)))
	var err error
	if moduleRoot, err = testenv.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// step-ca announces itself through the standard logger; the tests'
	// output is provision's.
	log.SetOutput(io.Discard)
	return testenv.RunWithBinary(m, "e2e", "", func(bin string) { nodetest.Binary = bin })
}

// node is one node's --root (tests/nodetest) with e2e's own checks.
type node struct{ *nodetest.Node }

// nodeOpt changes a node's config before it is written.
type nodeOpt = func(*controlplane.NodeConfig)

// newNode prepares a fresh root for a unique node id on cp: config with a
// 15s bootstrap deadline, the default hosts file with user lines, and (if
// withToken) a fresh one-time token.
func newNode(t testing.TB, cp *controlplane.ControlPlane, withToken bool, opts ...nodeOpt) *node {
	t.Helper()
	o := []nodetest.Option{nodetest.Deadline("15s", "3s"), nodetest.Configure(opts...)}
	if !withToken {
		o = append(o, nodetest.NoToken())
	}
	return &node{nodetest.New(t, cp, t.TempDir(), fmt.Sprintf("gpu-%04d", nodeSeq.Add(1)), o...)}
}

// entry is one file's observable state.
type entry struct {
	Mode    fs.FileMode
	Size    int64
	ModTime time.Time
	Link    string
}

// snapshot records every path under dir with its mode, size, mtime and
// symlink target.
func snapshot(t testing.TB, dir string) map[string]entry {
	t.Helper()
	m := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{Mode: fi.Mode(), ModTime: fi.ModTime()}
		if !fi.IsDir() {
			e.Size = fi.Size()
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			e.Link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(dir, p)
		m[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return m
}

// diffSnapshots describes every difference between two snapshots.
func diffSnapshots(before, after map[string]entry) []string {
	var d []string
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			d = append(d, "removed "+p)
		case a != b:
			d = append(d, fmt.Sprintf("changed %s: %+v -> %+v", p, b, a))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			d = append(d, "added "+p)
		}
	}
	return d
}

func perm(t testing.TB, p string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(p) // follows the stable symlinks, as the node-agent does
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// wantTokensNowhereBut fails if any file under the root other than allowed
// (host paths) holds one of the node's tokens or a token's signature: the
// token is never written anywhere but its own file.
func (n *node) wantTokensNowhereBut(allowed ...string) {
	n.T.Helper()
	ok := map[string]bool{}
	for _, a := range allowed {
		ok[a] = true
	}
	err := filepath.WalkDir(n.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSymlink != 0 || ok[p] {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, tok := range n.Tokens() {
			sig := tok[strings.LastIndex(tok, ".")+1:]
			if strings.Contains(string(b), tok) || strings.Contains(string(b), sig) {
				n.T.Errorf("%s holds a one-time token", p)
			}
		}
		return nil
	})
	if err != nil {
		n.T.Fatal(err)
	}
}

// generations lists pki_dir's generation directories.
func generations(t testing.TB, pki string) []string {
	t.Helper()
	ents, err := os.ReadDir(pki)
	if err != nil {
		t.Fatal(err)
	}
	var g []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "gen-") {
			g = append(g, e.Name())
		}
	}
	return g
}
