package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/fleet"
	"github.com/gpuaas/provision/tests/nodetest"
)

// treeHash is one hash over every path under dir: what snapshot records
// of each (type and mode, size, modification time, a link's target) and a
// file's contents. Two equal hashes mean nothing under dir was created,
// removed, written, touched or chmodded in between.
func treeHash(t testing.TB, dir string) string {
	t.Helper()
	snap := snapshot(t, dir)
	paths := make([]string, 0, len(snap))
	for p := range snap {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	h := sha256.New()
	for _, p := range paths {
		e := snap[p]
		fmt.Fprintf(h, "%s\x00%v\x00%d\x00%d\x00%s\x00", p, e.Mode, e.Size, e.ModTime.UnixNano(), e.Link)
		if e.Mode.IsRegular() {
			h.Write(readFile(t, filepath.Join(dir, p)))
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// dryRunDoc is the dry_run object of a dry run's JSON report, decoded
// independently of the product (its field names are the contract).
type dryRunDoc struct {
	Plan  string `json:"plan"`
	Rekey bool   `json:"rekey"`
	Why   string `json:"why"`
	Hosts *struct {
		Change string   `json:"change"`
		Block  []string `json:"block"`
	} `json:"hosts"`
	CA *struct {
		Current []struct {
			Fingerprint string `json:"fingerprint"`
		} `json:"current"`
	} `json:"ca"`
	Credentials struct {
		Present bool   `json:"present"`
		Serial  string `json:"serial"`
		Verdict string `json:"verdict"`
	} `json:"credentials"`
	Token struct {
		Use     string `json:"use"`
		Present bool   `json:"present"`
		Problem string `json:"problem"`
	} `json:"token"`
	Hook struct {
		Run bool `json:"would_run"`
	} `json:"hook"`
	Receipt bool `json:"receipt"`
}

// dryRun runs cmd --dry-run --format json (and extra) and returns the
// report and its dry_run object.
func (n *node) dryRun(t *testing.T, cmd string, extra ...string) (nodetest.Result, dryRunDoc) {
	t.Helper()
	r := n.RunJSON(cmd, append([]string{"--dry-run"}, extra...)...)
	var doc struct {
		DryRun *dryRunDoc `json:"dry_run"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &doc); err != nil || doc.DryRun == nil {
		t.Fatalf("%s --dry-run: no dry_run object (%v)\n%s", cmd, err, r)
	}
	return r, *doc.DryRun
}

// signs counts the sign requests the proxy saw, and those step-ca answered.
func signs(p *fleet.CAProxy) (seen, atCA int, tokenIDs []string) {
	for _, e := range p.Events() {
		if e.Sign {
			seen++
			tokenIDs = append(tokenIDs, e.TokenID)
			if e.Forwarded {
				atCA++
			}
		}
	}
	return seen, atCA, tokenIDs
}

// TestDryRunBootstrap: bootstrap --dry-run against the real step-ca behind
// the counting proxy says what the run would do (add the hosts block,
// enroll with the token, write the receipt), in JSON and in text, and does
// none of it: the tree under --root hashes the same before and after, no
// sign reaches the proxy (the roots fetch does: the count is live), and no
// tasks/wait reaches the node API. The real bootstrap after it then signs
// exactly once with the same token: the dry run did not burn it. A token
// that cannot be used stops the dry run at enroll (exit 20), as it would
// stop the run; a bootstrapped node's dry run says keep.
func TestDryRunBootstrap(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	proxy, err := fleet.StartCAProxy(cp.CA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) {
		c.CA.URL = "https://" + net.JoinHostPort(cp.CA.Hostname(), strconv.Itoa(proxy.Port()))
	})
	tokPath := n.Path(n.Cfg.CA.TokenFile)
	tok := readFile(t, tokPath)

	// No token: the run would stop at enroll, and so does the dry run.
	os.Remove(tokPath)
	before := treeHash(t, n.Root)
	r, d := n.dryRun(t, "bootstrap")
	if r.Code != 20 || r.Report.FailedLayer != "enroll" || d.Plan != "enroll" || d.Token.Use != "enroll" || d.Token.Problem == "" || !strings.HasPrefix(r.Report.Summary, "dry run: ") {
		t.Fatalf("dry run without a token: %+v\n%s", d, r)
	}
	if treeHash(t, n.Root) != before {
		t.Fatal("a dry run that stopped at enroll changed the node root")
	}
	if err := os.WriteFile(tokPath, tok, 0o600); err != nil {
		t.Fatal(err)
	}
	before = treeHash(t, n.Root)

	r, d = n.dryRun(t, "bootstrap")
	if r.Code != 0 || !r.Report.OK || d.Plan != "enroll" || d.Token.Use != "enroll" || !d.Token.Present || d.Token.Problem != "" ||
		d.Hosts == nil || d.Hosts.Change != "add" || len(d.Hosts.Block) != 4 || d.CA == nil || len(d.CA.Current) != 1 || d.CA.Current[0].Fingerprint != cp.CA.Fingerprint() ||
		d.Credentials.Present || !d.Receipt || d.Hook.Run {
		t.Fatalf("dry run of a fresh node: %+v\n%s", d, r)
	}
	text := n.Run("bootstrap", "--dry-run")
	for _, want := range []string{"hosts:", "would add the managed block", "plan:", "enroll (missing", "token:", "would be sent to the CA's /sign", "receipt:"} {
		if !strings.Contains(text.Stdout, want) {
			t.Errorf("text dry run lacks %q:\n%s", want, text)
		}
	}
	if text.Code != 0 || text.LastLine() != "provision bootstrap: dry run: would enroll with the one-time token, prove and publish the new set; nothing was changed" {
		t.Errorf("text dry run: exit %d, last line %q", text.Code, text.LastLine())
	}
	if q := n.Run("bootstrap", "--dry-run", "-q"); q.Code != 0 || q.Stdout != text.LastLine()+"\n" || strings.Contains(q.Stderr, "level=INFO") {
		t.Errorf("quiet dry run:\n%s", q)
	}
	if after := treeHash(t, n.Root); after != before {
		t.Fatalf("a dry run changed the node root (%s -> %s)", before, after)
	}
	seen, atCA, _ := signs(proxy)
	gets := 0
	for _, e := range proxy.Events() {
		if e.Method == "GET" && e.Forwarded {
			gets++
		}
	}
	if seen != 0 || atCA != 0 || gets == 0 {
		t.Fatalf("dry runs: %d signs at the proxy, %d at step-ca (want 0), %d roots requests (want some)", seen, atCA, gets)
	}
	if reqs := cp.API.Requests(); len(reqs) != 0 {
		t.Fatalf("a dry run reached the node API: %+v", reqs)
	}

	// The run itself: one sign, with the token the dry runs read and kept.
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	seen, atCA, ids := signs(proxy)
	if seen != 1 || atCA != 1 || len(ids) != 1 || ids[0] == "" {
		t.Fatalf("bootstrap after the dry runs: %d signs, %d at step-ca, token ids %q; want exactly one", seen, atCA, ids)
	}
	before = treeHash(t, n.Root)
	r, d = n.dryRun(t, "bootstrap")
	if r.Code != 0 || d.Plan != "keep" || d.Token.Use != "none" || d.Hosts.Change != "none" || !d.Credentials.Present || d.Credentials.Serial != n.Receipt().Serial {
		t.Fatalf("dry run of a bootstrapped node: %+v\n%s", d, r)
	}
	if after := treeHash(t, n.Root); after != before {
		t.Fatal("a dry run changed a bootstrapped node's root")
	}
	if seen, _, _ := signs(proxy); seen != 1 {
		t.Fatalf("%d signs after the last dry run, want still 1", seen)
	}
}

// TestDryRunRenew: renew --dry-run with the real step-ca behind the front,
// armed so that it terminates and records every request: not due, it says
// so; with --force it says it would rekey and run the hook; neither sends
// a renewal (no POST /renew or /rekey at the front), writes anything (tree
// hash) or runs the hook. The control: the real renew --force is seen at
// the front.
func TestDryRunRenew(t *testing.T) {
	t.Parallel()
	cp := controlplane.Start(t, controlplane.Options{})
	front, err := controlplane.StartCAFront(cp.CA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { front.Close() })
	hookDir := t.TempDir()
	hook := filepath.Join(hookDir, "hook.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\ntouch "+filepath.Join(hookDir, "ran")+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	n := newNode(t, cp, true, func(c *controlplane.NodeConfig) {
		c.CA.URL = front.URL()
		c.Renew = &controlplane.RenewConfig{PostHook: []string{hook}, PostHookTimeout: "5s"}
	})
	nodetest.WantExit(t, n.Run("bootstrap"), 0)
	serial := n.leafSerial()
	front.Refuse(1000, controlplane.FrontAnswer{}) // record every request from here on
	before := treeHash(t, n.Root)

	r, d := n.dryRun(t, "renew")
	if r.Code != 0 || d.Plan != "not-due" || d.Hook.Run || !strings.Contains(r.Report.Summary, "not due") {
		t.Fatalf("renew --dry-run, not due: %+v\n%s", d, r)
	}
	r, d = n.dryRun(t, "renew", "--force")
	if r.Code != 0 || d.Plan != "renew" || !d.Rekey || !d.Hook.Run || d.Credentials.Serial != serial || d.Hosts != nil {
		t.Fatalf("renew --dry-run --force: %+v\n%s", d, r)
	}
	text := n.Run("renew", "--dry-run", "--force")
	if text.Code != 0 || !strings.Contains(text.Stdout, "step-ca's /rekey") || !strings.Contains(text.Stdout, "would run after the new set is published") {
		t.Errorf("text:\n%s", text)
	}
	if after := treeHash(t, n.Root); after != before {
		t.Fatal("renew --dry-run changed the node root")
	}
	if _, err := os.Stat(filepath.Join(hookDir, "ran")); err == nil {
		t.Fatal("renew --dry-run ran the hook")
	}
	renewals := func() (n, gets int) {
		for _, e := range front.Events() {
			switch {
			case e.Method == "POST" && (strings.HasSuffix(e.Path, "/renew") || strings.HasSuffix(e.Path, "/rekey")):
				n++
			case e.Method == "GET":
				gets++
			}
		}
		return n, gets
	}
	if got, gets := renewals(); got != 0 || gets == 0 {
		t.Fatalf("dry runs: %d renewals at the CA's front (want 0), %d GETs (want some)", got, gets)
	}
	// The control: a real renewal is seen (the armed front refuses it).
	n.Run("renew", "--force")
	if got, _ := renewals(); got == 0 {
		t.Fatal("the front did not see the real renew: the count above proves nothing")
	}
}
