package reliability

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
)

// The node paths of issue 31's cases.
const (
	textfileDir = "/var/lib/prometheus/node-exporter"
	exporterUID = 1001 // node_exporter's user, who owns /var/lib/prometheus on Debian
)

// takeoverRun is one command and what it must give.
type takeoverRun struct {
	cmd   string
	exit  int
	layer string // JSON: the failed layer ("" for exit 0)
	says  string // in the summary when it fails
	logs  string // in the log (stderr): a warning the run's result does not carry
	warns string // a state-records warning in the report saying this
}

// takeoverCase is a node where something that is not provision's sits in
// its way (issue 31).
type takeoverCase struct {
	name   string
	cfg    func(*controlplane.NodeConfig)
	booted bool // a healthy bootstrap first
	plant  func(t *testing.T, n *node)
	// own are node paths that are provision's in this case beyond state_dir,
	// pki_dir, the token and its metrics files in the textfile directory;
	// notOwn are those defaults that are not (pki_dir pointed at nginx's).
	own, notOwn []string
	runs        []takeoverRun
	check       func(t *testing.T, n *node)
}

// TestNothingTakenOver is issue 31's adversary, through the real binary
// against the in-process control plane: a link the exporter's user planted
// at the textfile directory, another program's key pair and single files
// in pki_dir, state_dir and the textfile directory, a multi-megabyte
// /etc/group, and truncated, empty and binary records. Each run gives its
// documented exit code and says why, and a hash of the whole root, taken
// before and after every run, shows that nothing but provision's own files
// changed: its directories, the token it spends, its own metrics files and
// the managed block of the hosts file.
func TestNothingTakenOver(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "needs root to give files to another user")
	}
	cp := controlplane.Start(t, controlplane.Options{})
	cases := append(textfileCases(), foreignFileCases()...)
	cases = append(cases, groupCase())
	cases = append(cases, damagedCases()...)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := plantedNode(t, cp, fmt.Sprintf("gpu-take-%02d", i), tc.cfg, tc.booted, tc.plant)
			for _, r := range tc.runs {
				before := foreignTree(t, n, tc.own, tc.notOwn)
				runTakeover(t, n, r)
				if l := treeDiff(before, foreignTree(t, n, tc.own, tc.notOwn), ownPaths(n, tc.own)); len(l) > 0 {
					t.Errorf("%s changed what is not provision's: %v", r.cmd, l)
				}
			}
			if tc.check != nil {
				tc.check(t, n)
			}
		})
	}
	t.Logf("nothing-taken-over: %d cases", len(cases))
}

func runTakeover(t *testing.T, n *node, tr takeoverRun) {
	t.Helper()
	args := strings.Fields(tr.cmd)
	r := n.RunJSON(args[0], args[1:]...)
	rep := r.Report
	if r.Code != tr.exit || rep.FailedLayer != tr.layer {
		t.Fatalf("%s: exit %d layer %q, want %d %q\n%s", tr.cmd, r.Code, rep.FailedLayer, tr.exit, tr.layer, r)
	}
	if tr.says != "" && (!strings.Contains(rep.Summary, tr.says) || rep.Remedy == "") {
		t.Errorf("%s: the summary does not say %q (or there is no remedy): %s / %s", tr.cmd, tr.says, rep.Summary, rep.Remedy)
	}
	if tr.logs != "" && !strings.Contains(r.Stderr, tr.logs) {
		t.Errorf("%s: the log does not say %q:\n%s", tr.cmd, tr.logs, r.Stderr)
	}
	if tr.warns != "" {
		found := false
		for _, c := range rep.Checks {
			found = found || (c.Name == "state-records" && c.Status == "warn" && strings.Contains(c.Message, tr.warns))
		}
		if !found {
			t.Errorf("%s: no state-records warning saying %q in %+v", tr.cmd, tr.warns, rep.Checks)
		}
	}
	t.Logf("ran %s: exit %d %s %.160s", tr.cmd, r.Code, rep.FailedLayer, rep.Summary)
}

// textfileCases: the metrics directory's link (issue 31 item 1).
func textfileCases() []takeoverCase {
	exporterDir := func(owner int, inside func(t *testing.T, n *node, dir string)) func(t *testing.T, n *node) {
		return func(t *testing.T, n *node) {
			t.Helper()
			writeAt(t, n, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nprometheus:x:1001:1001::/var/lib/prometheus:/usr/sbin/nologin\n", 0o644)
			writeAt(t, n, "/etc/sudoers.d/README", "# sudo reads every file here\n", 0o440)
			os.Chmod(n.Path("/etc/sudoers.d"), 0o750)
			prom := n.Path("/var/lib/prometheus")
			must(t, os.MkdirAll(prom, 0o755))
			must(t, os.Chown(prom, owner, owner))
			inside(t, n, n.Path(textfileDir))
		}
	}
	link := func(target string, uid int) func(t *testing.T, n *node, dir string) {
		return func(t *testing.T, n *node, dir string) {
			must(t, os.Symlink(target, dir))
			must(t, os.Lchown(dir, uid, uid))
		}
	}
	sudoersUntouched := func(t *testing.T, n *node) {
		if ents, _ := os.ReadDir(n.Path("/etc/sudoers.d")); len(ents) != 1 {
			t.Errorf("/etc/sudoers.d holds %v: root wrote through the link", ents)
		}
	}
	both := func(logs string) []takeoverRun {
		return []takeoverRun{{cmd: "bootstrap", logs: logs}, {cmd: "verify", logs: logs}}
	}
	return []takeoverCase{
		{name: "node-exporter a link the exporter's user made to /etc/sudoers.d (the repro)",
			plant: exporterDir(exporterUID, link("/etc/sudoers.d", exporterUID)),
			runs:  both(textfileDir + " is a symbolic link owned by uid 1001 (prometheus)"), check: sudoersUntouched},
		{name: "node-exporter root's link in a directory the exporter's user owns",
			plant: exporterDir(exporterUID, link("/etc/sudoers.d", 0)),
			runs:  both("is a symbolic link in /var/lib/prometheus, which uid 1001 (prometheus) can write"), check: sudoersUntouched},
		{name: "node-exporter root's link in a root-only directory is followed",
			plant: exporterDir(0, func(t *testing.T, n *node, dir string) {
				must(t, os.MkdirAll(n.Path("/srv/metrics"), 0o755))
				link("/srv/metrics", 0)(t, n, dir)
			}),
			own:  []string{"/srv/metrics/provision_bootstrap.prom", "/srv/metrics/provision_verify.prom"},
			runs: both(""),
			check: func(t *testing.T, n *node) {
				if _, err := os.Stat(n.Path("/srv/metrics/provision_verify.prom")); err != nil {
					t.Errorf("the metrics were not written at the link's target: %v", err)
				}
			}},
		{name: "node-exporter the exporter's own directory, holding another exporter's file",
			plant: exporterDir(exporterUID, func(t *testing.T, n *node, dir string) {
				must(t, os.Mkdir(dir, 0o755))
				must(t, os.Chown(dir, exporterUID, exporterUID))
				writeAt(t, n, textfileDir+"/smartmon.prom", "smartmon_device_active 1\n", 0o644)
			}),
			runs: both(""),
			check: func(t *testing.T, n *node) {
				if _, err := os.Stat(n.Path(textfileDir + "/provision_bootstrap.prom")); err != nil {
					t.Errorf("no metrics in the exporter's own directory: %v", err)
				}
			}},
	}
}

// foreignFileCases: another program's key pair and single files (issue 31
// item 2).
func foreignFileCases() []takeoverCase {
	refused := func(says string) []takeoverRun {
		var rs []takeoverRun
		for _, cmd := range []string{"bootstrap", "renew", "renew --check", "verify"} {
			rs = append(rs, takeoverRun{cmd: cmd, exit: 3, layer: "config", says: says})
		}
		return rs
	}
	pki := func(dir string) func(*controlplane.NodeConfig) {
		return func(c *controlplane.NodeConfig) { c.Paths.PKIDir = dir }
	}
	return []takeoverCase{
		{name: "pki_dir nginx's key pair (the repro)", cfg: pki("/etc/nginx/ssl"), notOwn: []string{"/etc/nginx/ssl"},
			plant: func(t *testing.T, n *node) {
				writeAt(t, n, "/etc/nginx/ssl/key.pem", "-----BEGIN PRIVATE KEY-----\nnginx\n-----END PRIVATE KEY-----\n", 0o640)
				writeAt(t, n, "/etc/nginx/ssl/cert.pem", "-----BEGIN CERTIFICATE-----\nwww.example.com\n-----END CERTIFICATE-----\n", 0o644)
			},
			runs: refused("key.pem (a regular file: another program's credential")},
		{name: "pki_dir holding another program's single ca.pem", cfg: pki("/etc/pki"), notOwn: []string{"/etc/pki"},
			plant: func(t *testing.T, n *node) { writeAt(t, n, "/etc/pki/ca.pem", "somebody's bundle\n", 0o644) },
			runs:  refused("ca.pem (a regular file: another program's credential")},
		{name: "state_dir holding another program's single file named like a record",
			cfg:    func(c *controlplane.NodeConfig) { c.Paths.StateDir = "/srv/app" },
			notOwn: []string{"/srv/app"},
			plant:  func(t *testing.T, n *node) { writeAt(t, n, "/srv/app/renew.json", `{"schedule":"daily"}`+"\n", 0o644) },
			runs:   refused("provision did not create it")},
		{name: "state_dir an app's directory holding only empty subdirectories and a link",
			cfg:    func(c *controlplane.NodeConfig) { c.Paths.StateDir = "/srv/app" },
			notOwn: []string{"/srv/app"},
			plant: func(t *testing.T, n *node) {
				for _, d := range []string{"/srv/app/cache", "/srv/app/spool", "/srv/elsewhere"} {
					must(t, os.MkdirAll(n.Path(d), 0o755))
				}
				must(t, os.Symlink("/srv/elsewhere", n.Path("/srv/app/data")))
				must(t, os.Chmod(n.Path("/srv/app"), 0o775))
			},
			runs: refused("cache (a directory provision did not create")},
		{name: "state_dir unmarked, holding the configured pki_dir empty (a volume mounted for it)",
			cfg:   func(c *controlplane.NodeConfig) { c.Paths.StateDir, c.Paths.PKIDir = "/srv/prov", "/srv/prov/pki" },
			own:   []string{"/srv/prov"},
			plant: func(t *testing.T, n *node) { must(t, os.MkdirAll(n.Path("/srv/prov/pki"), 0o755)) },
			runs:  []takeoverRun{{cmd: "bootstrap"}}},
	}
}

// groupCase: a multi-megabyte /etc/group (issue 31 item 3).
func groupCase() takeoverCase {
	return takeoverCase{name: "a 6 MB /etc/group with paths.key_group",
		cfg: func(c *controlplane.NodeConfig) { c.Paths.KeyGroup = "node-agent" },
		plant: func(t *testing.T, n *node) {
			members := make([]string, 500000)
			for i := range members {
				members[i] = fmt.Sprintf("member%06d", i)
			}
			writeAt(t, n, "/etc/group", "root:x:0:\neveryone:x:100:"+strings.Join(members, ",")+"\nnode-agent:x:990:agent\n", 0o644)
			cp := n.CP
			cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
		},
		runs: []takeoverRun{{cmd: "bootstrap"}, {cmd: "renew"}, {cmd: "verify"}},
		check: func(t *testing.T, n *node) {
			st, err := os.Stat(filepath.Join(n.Files.PKIDir, "key.pem"))
			if err != nil || st.Mode().Perm() != 0o640 || st.Sys().(*syscall.Stat_t).Gid != 990 {
				t.Errorf("key.pem: %v %v, want 0640 for gid 990 (node-agent)", st, err)
			}
		}}
}

// damagedCases: truncated, empty and binary records (issue 31 item 4).
func damagedCases() []takeoverCase {
	var cs []takeoverCase
	full := `{"node_id":"gpu-take","serial":"42","last_result":"renewed","hook_pending":true}`
	for _, record := range []string{"renew.json", "receipt.json"} {
		for _, k := range []struct{ kind, content string }{{"truncated", full[:37]}, {"empty", ""}, {"binary", "\x00\x01\xfe\xffSQLite format 3\x00"}} {
			cs = append(cs, takeoverCase{name: fmt.Sprintf("a %s %s", k.kind, record), booted: true,
				plant: func(t *testing.T, n *node) {
					must(t, os.WriteFile(filepath.Join(n.Files.StateDir, record), []byte(k.content), 0o644))
				},
				runs: []takeoverRun{
					{cmd: "verify", warns: record + " does not parse"},
					{cmd: "renew", warns: "a damaged " + record + " was kept aside as " + record + ".damaged-"},
					{cmd: "verify", warns: "kept aside as " + record + ".damaged-"},
				},
				check: func(t *testing.T, n *node) {
					matches, _ := filepath.Glob(filepath.Join(n.Files.StateDir, record+".damaged-*"))
					if len(matches) != 1 {
						t.Fatalf("kept aside: %v, want one", matches)
					}
					if b, _ := os.ReadFile(matches[0]); string(b) != k.content {
						t.Errorf("the record kept aside holds %q, want %q", b, k.content)
					}
					r := n.Run("status", "--format", "json")
					var st struct{ Attention []string }
					json.Unmarshal([]byte(r.Stdout), &st)
					if !strings.Contains(strings.Join(st.Attention, "\n"), "kept aside as "+filepath.Base(matches[0])) {
						t.Errorf("status does not name the record kept aside: %v", st.Attention)
					}
				}})
		}
	}
	return cs
}

// writeAt writes content at the node path p, making its directories.
func writeAt(t *testing.T, n *node, p, content string, mode os.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(n.Path(p)), 0o755))
	must(t, os.WriteFile(n.Path(p), []byte(content), mode))
	must(t, os.Chmod(n.Path(p), mode))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// foreignTree hashes everything under the node's root that is not
// provision's own: every path's kind, mode, owner, link target and
// content. Left out: state_dir, pki_dir and the token file (unless
// notOwn), provision's metrics files in the textfile directory, the paths
// in own, and the managed block of the hosts file (its other lines are
// hashed).
func foreignTree(t *testing.T, n *node, own, notOwn []string) map[string]string {
	t.Helper()
	mine := ownPaths(n, own)
	skip := func(node string) bool {
		if strings.HasPrefix(filepath.Base(node), ".provision_") && filepath.Dir(node) == textfileDir {
			return true // a metrics write's temp file
		}
		for _, p := range mine {
			if (node == p || strings.HasPrefix(node, p+"/")) && !contains(notOwn, p) {
				return true
			}
		}
		return false
	}
	out := map[string]string{}
	err := filepath.WalkDir(n.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		node := "/" + strings.TrimPrefix(strings.TrimPrefix(p, n.Root), "/")
		if skip(node) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		out[node] = describeEntry(t, p, node == n.Cfg.Paths.HostsFile)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ownPaths are the node paths of provision's own files in a case: its
// directories, the token, its metrics files and the case's own.
func ownPaths(n *node, own []string) []string {
	mine := []string{n.Cfg.Paths.StateDir, n.Cfg.Paths.PKIDir, n.Cfg.CA.TokenFile}
	for _, p := range []string{"bootstrap", "verify", "renew"} {
		mine = append(mine, textfileDir+"/provision_"+p+".prom")
	}
	return append(mine, own...)
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// describeEntry is one path's kind, mode, owner and link or content hash;
// for the hosts file, without provision's managed block.
func describeEntry(t *testing.T, p string, hostsFile bool) string {
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	d := fmt.Sprintf("%v %d:%d", st.Mode(), sys.Uid, sys.Gid)
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		l, _ := os.Readlink(p)
		return d + " -> " + l
	case st.Mode().IsRegular():
		b, _ := os.ReadFile(p)
		if hostsFile {
			b = []byte(withoutBlock(string(b)))
		}
		sum := sha256.Sum256(b)
		return d + " " + hex.EncodeToString(sum[:8])
	}
	return d
}

// withoutBlock is a hosts file without provision's managed block.
func withoutBlock(s string) string {
	var out []string
	in := false
	for _, l := range strings.Split(s, "\n") {
		switch {
		case strings.HasPrefix(l, "# BEGIN provision managed block"):
			in = true
		case strings.HasPrefix(l, "# END provision managed block"):
			in = false
		case !in:
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// treeDiff lists what differs between two foreignTrees. A new directory
// on the way to one of provision's own paths is its own: the missing
// parents of state_dir it creates 0755, as a package manager would.
func treeDiff(before, after map[string]string, own []string) []string {
	var out []string
	for k, v := range before {
		if after[k] != v {
			out = append(out, fmt.Sprintf("%s: %q -> %q", k, v, after[k]))
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok && !(strings.HasPrefix(v, "drwxr-xr-x 0:0") && ancestorOf(k, own)) {
			out = append(out, fmt.Sprintf("%s: new %q", k, v))
		}
	}
	sort.Strings(out)
	return out
}

// ancestorOf says whether dir is a directory on the way to one of paths.
func ancestorOf(dir string, paths []string) bool {
	for _, p := range paths {
		if strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/") {
			return true
		}
	}
	return false
}
