package boot

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/gpuaas/provision/clientcert"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
)

// lab is the control plane a booted node enrolls with and polls: the real
// step-ca (in-process) issuing certificates of lifetime, and real nginx
// terminating mTLS in front of the node API, which reads the node's
// identity from the certificate nginx forwards (plain HTTP behind it).
// Everything listens on 127.0.0.1, which the container shares.
type lab struct {
	t     *testing.T
	cp    *controlplane.ControlPlane
	api   *controlplane.NodeAPI
	nginx *ingress.Ingress
	// clientCA is the file nginx trusts for client authentication: the
	// step root, or another CA's for the broken ingress.
	clientCA string
}

// startLab starts the lab. With wrongClientCA nginx trusts an unrelated CA
// for client authentication: the incident's "wrong CA material".
func startLab(t *testing.T, lifetime time.Duration, wrongClientCA bool) *lab {
	t.Helper()
	ingress.Require(t, ingress.Nginx)
	l := &lab{t: t, cp: controlplane.Start(t, controlplane.Options{CALifetime: lifetime})}
	dir := t.TempDir()
	p := l.cp.CA.PKI()
	leaf, err := p.IssueServerCert(controlplane.DefaultAPIHostname, net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	l.clientCA = filepath.Join(dir, "client-ca.pem")
	ca := p.RootPath
	if wrongClientCA {
		ca = l.cp.Unrelated.RootPath
	}
	for f, src := range map[string][]byte{cert: leaf.ChainPEM(), key: leaf.KeyPEM(), l.clientCA: readFile(t, ca)} {
		if err := os.WriteFile(f, src, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ident, err := controlplane.NewForwardedIdentity(clientcert.Config{Roots: controlplane.ForwardedRoots(p)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l.api, err = controlplane.NewNodeAPI(controlplane.NodeAPIOptions{
		Hostname: controlplane.DefaultAPIHostname, PlainHTTP: true, Identity: ident.Identity,
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.api.Close() })
	if l.nginx, err = ingress.Start(context.Background(), ingress.Nginx, ingress.Options{
		Hostname: controlplane.DefaultAPIHostname, ServerCertFile: cert, ServerKeyFile: key,
		ClientCAFile: l.clientCA, Upstream: l.api.URL(), Dir: filepath.Join(dir, "nginx"),
	}); err != nil {
		t.Fatalf("nginx: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nginx log:\n%s", tail(l.nginx.Log(), 40))
		}
		l.nginx.Stop()
	})
	return l
}

// fixIngress is the runbook's fix for tls-client-auth: put the step-ca
// root in the ingress's client-auth CA file and reload it.
func (l *lab) fixIngress() {
	l.t.Helper()
	if err := os.WriteFile(l.clientCA, readFile(l.t, l.cp.CA.PKI().RootPath), 0o600); err != nil {
		l.t.Fatal(err)
	}
	if err := l.nginx.Reload(context.Background()); err != nil {
		l.t.Fatal(err)
	}
}

// nodeConfig is the config the operator keeps for nodeID: the lab's CA by
// hostname, the node API through nginx by hostname, both names mapped to
// 127.0.0.1 by provision's hosts block; a one-second proof long poll.
func (l *lab) nodeConfig(nodeID string) controlplane.NodeConfig {
	c := l.cp.NodeConfig(nodeID)
	c.NodeAPI.URL = "https://" + net.JoinHostPort(controlplane.DefaultAPIHostname, strconv.Itoa(l.nginx.Port))
	return c
}

// operatorFiles writes what the operator renders user-data from, on this
// machine (not in the node): the config (plus extra TOML appended, for the
// sections NodeConfig has no fields for) and a fresh one-time token.
func (l *lab) operatorFiles(c controlplane.NodeConfig, extra string) (cfgFile, tokenFile string) {
	l.t.Helper()
	dir := l.t.TempDir()
	b, err := c.TOML()
	if err != nil {
		l.t.Fatal(err)
	}
	tok, err := l.cp.Token(c.NodeID)
	if err != nil {
		l.t.Fatal(err)
	}
	cfgFile, tokenFile = filepath.Join(dir, c.NodeID+".toml"), filepath.Join(dir, "token.jwt")
	if err := os.WriteFile(cfgFile, append(b, extra...), 0o644); err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600); err != nil {
		l.t.Fatal(err)
	}
	return cfgFile, tokenFile
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// report is the part of provision's JSON report (one journal line) the
// tests judge.
type report struct {
	OK          bool   `json:"ok"`
	Command     string `json:"command"`
	NodeID      string `json:"node_id"`
	FailedLayer string `json:"failed_layer"`
	Owner       string `json:"owner"`
	Summary     string `json:"summary"`
	Remedy      string `json:"remedy"`
	ExitCode    *int   `json:"exit_code"`
	Checks      []struct {
		Name, Status string
	} `json:"checks"`
	at time.Time
}

// provisionLines are the lines provision itself wrote under unit in the
// given boot, in order.
func (c *container) provisionLines(boot, unit string) []entry {
	return c.journal(boot, "_SYSTEMD_UNIT="+unit, "SYSLOG_IDENTIFIER=provision")
}

// reports are provision's reports in the journal for unit in boot: the
// lines that are a JSON document with checks and no log message. A line
// of provision's that is not JSON fails the test: under the journal every
// line is (docs/logging.md).
func (c *container) reports(boot, unit string) []report {
	t := c.n.t
	t.Helper()
	var rs []report
	for _, e := range c.provisionLines(boot, unit) {
		msg := e.str("MESSAGE")
		var probe map[string]json.RawMessage
		if err := json.Unmarshal([]byte(msg), &probe); err != nil {
			t.Fatalf("%s wrote a journal line that is not JSON (the report and the log are one JSON object a line under the journal): %q", unit, msg)
		}
		if _, isLog := probe["msg"]; isLog {
			continue
		}
		var r report
		if err := json.Unmarshal([]byte(msg), &r); err != nil || probe["checks"] == nil || r.ExitCode == nil {
			t.Fatalf("%s wrote a JSON line that is neither a log line nor a report: %s", unit, msg)
		}
		r.at = e.at()
		rs = append(rs, r)
	}
	return rs
}

// splayed says, for each run of unit in boot (by run_id, in order),
// whether it logged a restart-splay wait: it took itself for a restart.
func (c *container) splayed(boot, unit string) (runs []string, waited map[string]bool) {
	waited = map[string]bool{}
	for _, e := range c.provisionLines(boot, unit) {
		var l struct {
			Msg    string `json:"msg"`
			RunID  string `json:"run_id"`
			Step   string `json:"step"`
			Status string `json:"status"`
		}
		if json.Unmarshal([]byte(e.str("MESSAGE")), &l) != nil || l.RunID == "" {
			continue
		}
		if _, seen := waited[l.RunID]; !seen {
			runs = append(runs, l.RunID)
			waited[l.RunID] = false
		}
		if l.Msg == "step" && l.Step == "restart-splay" && l.Status == "wait" {
			waited[l.RunID] = true
		}
	}
	return runs, waited
}

// waitReports waits until unit's reports in boot number at least n (the
// journal takes a unit's last line a moment after the unit ended) and
// returns them all.
func (c *container) waitReports(boot, unit string, n int) []report {
	c.n.t.Helper()
	var rs []report
	waitFor(c.n.t, unit+"'s report in the journal", time.Minute, func() (bool, string) {
		rs = c.reports(boot, unit)
		return len(rs) >= n, fmt.Sprintf("%d reports", len(rs))
	})
	return rs
}
