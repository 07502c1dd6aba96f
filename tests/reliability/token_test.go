package reliability

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/fleet"
	"github.com/gpuaas/provision/tests/nodetest"
)

// TestTokenCrashWindow pins down what happens when provision dies between
// the CA accepting the one-time token and the certificate being saved.
//
// step-ca burns a token as soon as it sees the sign request, before it
// validates it; the key was generated in memory for that request. A process
// killed after the CA answered ("after sign") loses the certificate and the
// key together, and the token cannot be redeemed again. Nothing the node can
// do recovers that token, so provision makes the situation plain instead:
// before sending the token it records its SHA-256 (never the token) in
// state_dir/enroll-pending.json. The next run with the same token gets the
// CA's 401 and reports, with exit 20 (layer enroll, owner ca), that an
// earlier run presented this same token and the CA burnt it, and that a
// fresh token is needed; orchestration keys on exit 20 to mint one. With a
// fresh token the next run enrolls and exits 0, removing the token file and
// the marker.
//
// A kill before the request left ("before sign") does not burn the token:
// the marker is there but the CA never saw it, and the same token works.
func TestTokenCrashWindow(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	t.Run("after sign", func(t *testing.T) {
		n := newNode(t, cp, "gpu-tok-after", nil)
		if r := n.bootstrap("PROVISION_CRASH_AT=after sign"); !r.Killed {
			t.Fatalf("not killed at after sign: %s", r)
		}
		if !fileExists(filepath.Join(n.Files.StateDir, state.PendingFile)) {
			t.Fatal("no enrollment marker after a kill after sign")
		}
		if !fileExists(n.Files.TokenPath) {
			t.Fatal("token file removed although no certificate was saved")
		}
		r := n.bootstrap()
		wantExit(t, r, 20, "layer enroll", "earlier run presented this same token", "burnt", n.Cfg.CA.TokenFile)
		n.GiveToken()
		cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
		r2 := n.bootstrap()
		wantExit(t, r2, 0, "done")
		if fileExists(n.Files.TokenPath) || fileExists(filepath.Join(n.Files.StateDir, state.PendingFile)) {
			t.Error("token file or marker left after the enrollment")
		}
		t.Logf("token after sign: same token exit %d (%s); fresh token exit %d", r.Code, r.LastOutputLine(), r2.Code)
	})
	t.Run("before sign", func(t *testing.T) {
		n := newNode(t, cp, "gpu-tok-before", nil)
		if r := n.bootstrap("PROVISION_CRASH_AT=before sign"); !r.Killed {
			t.Fatalf("not killed at before sign: %s", r)
		}
		cp.API.QueueTask(n.ID, controlplane.Task{Kind: "noop"})
		r := n.bootstrap()
		wantExit(t, r, 0, "done")
		if !strings.Contains(r.Stderr, "trying it once more") {
			t.Errorf("the re-run did not say it reused the presented token:\n%s", r.Stderr)
		}
		b, _ := os.ReadFile(filepath.Join(n.Files.StateDir, state.ReceiptFile))
		t.Logf("token before sign: same token exit %d, receipt %d bytes", r.Code, len(b))
	})
	t.Logf("token-window: 2 kills, 0 violations")
}

// TestTokenSingleUseAcrossRestart (issue 29, 9): step-ca signs, its answer
// is lost on the way back (a balancer answers 503 instead), and step-ca
// restarts before the node's retry. The token's single use rests on
// step-ca's database: a persistent one still holds the token as used, so
// the retry is refused "already used" and bootstrap says so plainly,
// exit 20, nothing signed twice. With step-ca's in-memory default the
// restarted CA has forgotten the token and signs it again: the
// precondition README and docs/configuration.md state. Both CAs accept
// tokens minted before they started (authority.disableIssuedAtCheck, as
// a fleet minting tokens into user-data has it): otherwise the restart
// would refuse the retry as "issued before the bootstrap" whatever the
// database holds.
func TestTokenSingleUseAcrossRestart(t *testing.T) {
	for _, tc := range []struct {
		name       string
		persistent bool
	}{{"persistent database", true}, {"in-memory database (the precondition unmet)", false}} {
		t.Run(tc.name, func(t *testing.T) {
			cp := controlplane.Start(t, controlplane.Options{CARevocation: tc.persistent, CADisableIssuedAtCheck: true})
			proxy, err := fleet.StartCAProxy(cp.CA)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { proxy.Close() })
			restarts := 0
			proxy.SetFault(&fleet.Fault{Status: 503, FirstSigns: 1, LoseAnswer: true, For: time.Hour, AfterLost: func() {
				if err := cp.CA.Restart(); err != nil {
					t.Errorf("restarting step-ca: %v", err)
				}
				restarts++
			}})
			n := newNode(t, cp, "gpu-restart", func(c *controlplane.NodeConfig) { c.CA.URL = withPort(c.CA.URL, proxy.Port()) })
			r := n.RunJSON("bootstrap")
			signs := signStatuses(proxy.Events())
			if restarts != 1 || len(signs) != 2 || signs[0] != 201 {
				t.Fatalf("want one lost signature, a restart, then the retry: restarts %d, signs at step-ca %v\n%s", restarts, signs, r)
			}
			if !tc.persistent {
				// The retry was signed again: two certificates for one token.
				if signs[1] != 201 || r.Code != 0 {
					t.Fatalf("in-memory: signs %v, exit %d: the restarted CA was expected to forget the token\n%s", signs, r.Code, r)
				}
				t.Logf("token-restart: in-memory database, the same token signed twice (%v): the documented precondition", signs)
				return
			}
			nodetest.WantFailure(t, r, 20, "enroll", "")
			if signs[1] != 401 || !strings.Contains(r.Report.Summary, "already used") || !strings.Contains(r.Report.Summary, "this run's earlier attempt presented this same token") ||
				!strings.Contains(r.Report.Summary, "nothing was signed twice") {
				t.Fatalf("persistent: signs %v, summary %q", signs, r.Report.Summary)
			}
			t.Logf("token-restart: persistent database, the retry after the restart refused (%v), exit %d: %s", signs, r.Code, r.Report.Summary)
		})
	}
}

// signStatuses are step-ca's answers to the signs the proxy forwarded.
func signStatuses(evs []fleet.Event) []int {
	var out []int
	for _, e := range evs {
		if e.Sign && e.Forwarded {
			out = append(out, e.Status)
		}
	}
	return out
}

// TestTokenSingleUseAcrossReplicas (issue 29, 9): the control plane as it
// runs at scale: two step-ca replicas (processes of their own) on one
// PostgreSQL behind a real HAProxy. The replica that signs is killed
// (SIGKILL) after it stored the certificate and before its answer left;
// the node's retry lands on the other replica, which finds the token used
// in the shared database and refuses it: exit 20, "already used", one
// certificate in the database for the token.
func TestTokenSingleUseAcrossReplicas(t *testing.T) {
	if _, err := fleet.FindPostgres(); err != nil {
		testenv.SkipOrFail(t, "step-ca replicas on PostgreSQL not tested: %v (.ci/run installs the postgresql package)", err)
	}
	pg, err := fleet.StartPostgres(filepath.Join(t.TempDir(), "pg"), 50)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	cp := controlplane.Start(t, controlplane.Options{CADB: pg.Config()})
	var replicas []*controlplane.Replica
	var addrs []string
	for i := 0; i < 2; i++ {
		rep, err := cp.CA.StartReplica(pg.Config())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(rep.Kill)
		replicas, addrs = append(replicas, rep), append(addrs, rep.Addr)
	}
	lb := controlplane.StartTCPBalancer(t, addrs...)
	_, port, _ := net.SplitHostPort(lb)
	lbPort, _ := strconv.Atoi(port)
	// The token is minted now, after the replicas started (step-ca's
	// issued-at check).
	n := newNode(t, cp, "gpu-replicas", func(c *controlplane.NodeConfig) { c.CA.URL = withPort(c.CA.URL, lbPort) })
	killed := make(chan string, 1)
	go func() {
		select {
		case s := <-replicas[0].Signed():
			replicas[0].Kill()
			killed <- "replica 1 (serial " + s + ")"
		case s := <-replicas[1].Signed():
			replicas[1].Kill()
			killed <- "replica 2 (serial " + s + ")"
		case <-time.After(time.Minute):
			killed <- ""
		}
	}()
	r := n.RunJSON("bootstrap")
	who := <-killed
	if who == "" {
		t.Fatalf("no replica signed\n%s", r)
	}
	nodetest.WantFailure(t, r, 20, "enroll", "")
	if !strings.Contains(r.Report.Summary, "already used") || !strings.Contains(r.Report.Summary, "nothing was signed twice") {
		t.Fatalf("summary %q", r.Report.Summary)
	}
	certs, err := pg.Count("x509_certs")
	if err != nil {
		t.Fatal(err)
	}
	if certs != 1 {
		t.Fatalf("PostgreSQL holds %d certificates for one token, want 1", certs)
	}
	t.Logf("token-replicas: %s killed after its signature was stored, the retry refused by the other: exit %d, %d certificate in PostgreSQL", who, r.Code, certs)
}
