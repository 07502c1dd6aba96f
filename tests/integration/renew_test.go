package integration

// Renewal through a real ingress (issue 14, "How it is tested": a node
// renews repeatedly for several lifetimes while a simulated node-agent
// long-polls through a REAL ingress with the stable key.pem/cert.pem links;
// the agent never sees a failure or a mismatched key and certificate).
//
// Why here and not only in internal/renew: the unit test proves the
// renewal with the in-process node API, which verifies the client
// certificate itself. In production the node-agent's certificate is checked
// by the ingress (nginx ssl_verify_client against the step root) and
// reaches the API only as a forwarded header. A renewed certificate that
// nginx refuses, or that the API cannot read from nginx's header, or a
// publish that lets the agent read a key and a certificate from different
// generations, only shows up with the real program in the path and the
// real binary doing the renewals.

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/ingress"
)

// renewLifetime is step-ca's certificate lifetime in this test: short
// enough that several lifetimes pass in well under a minute, long enough
// that a renew run (a roots fetch, a new certificate, the proof's one
// second long poll through nginx) fits inside the time left after the
// renewal point on a busy 2-core machine under the race detector.
const renewLifetime = 8 * time.Second

// agentPollTimeout is the node-agent's long poll (the API's ?timeout=).
const agentPollTimeout = 1

// agentStats is what the simulated node-agent saw.
type agentStats struct {
	mu       sync.Mutex
	polls    int
	serials  map[string]int // serial -> successful polls with it
	order    []string       // serials in the order first seen
	failures []string
	// straddles counts reads during which current moved between cert.pem
	// and key.pem: read again, as the agent contract says.
	straddles int
}

func (s *agentStats) straddle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.straddles++
}

func (s *agentStats) ok(serial string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.polls++
	if s.serials[serial] == 0 {
		s.order = append(s.order, serial)
	}
	s.serials[serial]++
}

func (s *agentStats) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
}

// TestRenewThroughIngress: a real step-ca issuing 8-second certificates,
// real nginx in front of the node API (mTLS against the step root, the
// client certificate forwarded), the real provision binary. The node
// bootstraps once, then `provision renew` runs every second, as a tight
// timer would, for three and a half lifetimes, while a node-agent long-polls
// tasks/wait through nginx, loading key.pem and cert.pem afresh from the
// stable links for every poll. Every poll must succeed with a matching
// pair, the agent must see at least three renewals, and it must never see
// a serial that provision did not publish.
//
// Not parallel: the renewal point leaves a few seconds of slack, which the
// other cells of this package (run in parallel after the sequential tests)
// would eat on a 2-core machine.
func TestRenewThroughIngress(t *testing.T) {
	e := newEnv(t, ingress.Nginx, envOptions{
		ca: controlplane.Options{CALifetime: renewLifetime},
		node: func(e *env, c *controlplane.NodeConfig) {
			// With one node the fleet splay has nothing to spread. The
			// timer period and the proof are a large share of a
			// seconds-long lifetime: the default 2/3 plus splay can leave
			// under a second between a run's start and the old
			// certificate's expiry, half of it leaves several seconds.
			c.Renew = &controlplane.RenewConfig{Fraction: 0.5, Splay: "0s"}
		},
	})
	if r := e.bootstrap(); r.code != 0 {
		t.Fatalf("bootstrap: exit %d %s/%s: %s\n%s", r.code, r.rep.FailedLayer, r.rep.Owner, r.rep.Summary, r.stderr)
	}
	first := certSerial(t, e)
	published := map[string]bool{first: true}

	stats := &agentStats{serials: map[string]int{}}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.nodeAgent(ctx, stats) }()
	defer func() { stop(); wg.Wait() }()

	start := time.Now()
	end := start.Add(3*renewLifetime + renewLifetime/2)
	runs, renewals := 0, 0
	last := first
	// A failed run ends the loop but not the test at once: what the
	// node-agent saw until then is reported below.
renewing:
	for time.Now().Before(end) {
		r := e.provision("renew")
		runs++
		if r.code != 0 {
			t.Errorf("renew run %d: exit %d %s/%s: %s\n%s", runs, r.code, r.rep.FailedLayer, r.rep.Owner, r.rep.Summary, r.stderr)
			break
		}
		cur := certSerial(t, e)
		renewed := strings.HasPrefix(r.rep.Summary, "renewed:")
		switch {
		case renewed && cur == last:
			t.Errorf("renew run %d reports %q but cert.pem still has serial %s", runs, r.rep.Summary, cur)
			break renewing
		case !renewed && cur != last:
			t.Errorf("renew run %d reports %q but cert.pem changed from serial %s to %s", runs, r.rep.Summary, last, cur)
			break renewing
		case renewed:
			if published[cur] {
				t.Errorf("renew run %d published serial %s again", runs, cur)
				break renewing
			}
			published[cur] = true
			renewals++
			last = cur
		}
		time.Sleep(time.Second)
	}
	took := time.Since(start).Round(100 * time.Millisecond)
	stop()
	wg.Wait()

	stats.mu.Lock()
	defer stats.mu.Unlock()
	for _, f := range stats.failures {
		t.Errorf("node-agent: %s", f)
	}
	for _, s := range stats.order {
		if !published[s] {
			t.Errorf("node-agent polled with serial %s, which provision never published", s)
		}
	}
	seen := len(stats.order) - 1 // the bootstrap's serial is not a renewal
	if renewals < 3 || seen < 3 || stats.polls == 0 {
		t.Errorf("%d renew runs over %s: %d renewals published, %d seen by the node-agent in %d polls; want at least 3 each", runs, took, renewals, seen, stats.polls)
	}
	if t.Failed() {
		return
	}
	t.Logf("renew-through-ingress: %d renewals over %s, %d agent polls, %d failures, %d reads re-done because a renewal was published between cert.pem and key.pem", seen, took, stats.polls, len(stats.failures), stats.straddles)
	t.Logf("renew-through-ingress detail: %d renew runs, %d-second certificates, serials seen by the node-agent (polls each): %s", runs, int(renewLifetime.Seconds()), serialCounts(stats))
}

// nodeAgent long-polls tasks/wait through the ingress until ctx ends. For
// every poll it loads key.pem and cert.pem afresh from the stable links (as
// an agent does after a restart or a reload), checks that they are one
// pair, and presents them to nginx; ca.pem verifies nginx's certificate.
func (e *env) nodeAgent(ctx context.Context, s *agentStats) {
	pki := e.files.PKIDir
	waitURL := e.cfg.NodeAPI.URL + strings.Replace(controlplane.WaitPath, "{node_id}", nodeID, 1) + fmt.Sprintf("?timeout=%d", agentPollTimeout)
	addr := e.in.Addr // loopback: the node's hosts override, without reading it
	pause := func() {
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	for ctx.Err() == nil {
		genBefore, _ := os.Readlink(filepath.Join(pki, "current"))
		pair, err := tls.LoadX509KeyPair(filepath.Join(pki, "cert.pem"), filepath.Join(pki, "key.pem"))
		caPEM, caErr := os.ReadFile(filepath.Join(pki, "ca.pem"))
		genAfter, _ := os.Readlink(filepath.Join(pki, "current"))
		straddle := ""
		if genBefore != genAfter {
			straddle = fmt.Sprintf(" (current moved from %s to %s during the read)", genBefore, genAfter)
		}
		if err != nil {
			if straddle != "" {
				// A renewal published between the two reads: the agent
				// contract (README, Files written) is to read again.
				s.straddle()
				continue
			}
			s.fail("loading key.pem and cert.pem: %v", err)
			pause()
			continue
		}
		leaf := pair.Leaf
		if leaf == nil {
			if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
				s.fail("cert.pem: %v", err)
				pause()
				continue
			}
		}
		signer, ok := pair.PrivateKey.(crypto.Signer)
		pub, ok2 := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !ok2 || !pub.Equal(signer.Public()) {
			if straddle != "" {
				s.straddle()
				continue
			}
			s.fail("key.pem does not match cert.pem (serial %s) although current did not move", leaf.SerialNumber)
			pause()
			continue
		}
		roots := x509.NewCertPool()
		if caErr != nil || !roots.AppendCertsFromPEM(caPEM) {
			s.fail("ca.pem holds no certificate: %v", caErr)
			pause()
			continue
		}
		c := &http.Client{
			Timeout: agentPollTimeout*time.Second + 10*time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, addr)
				},
				TLSClientConfig:   &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: controlplane.DefaultAPIHostname},
				DisableKeepAlives: true,
			},
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, waitURL, nil)
		resp, err := c.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				s.fail("poll with serial %s (not after %s): %v", leaf.SerialNumber, leaf.NotAfter.Format("15:04:05"), err)
				pause()
			}
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
			s.fail("poll with serial %s: %s", leaf.SerialNumber, resp.Status)
			pause()
			continue
		}
		s.ok(leaf.SerialNumber.String())
	}
}

// certSerial is the serial of the certificate behind the stable cert.pem.
func certSerial(t *testing.T, e *env) string {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(e.files.PKIDir, "cert.pem"), filepath.Join(e.files.PKIDir, "key.pem"))
	if err != nil {
		t.Fatalf("the published set: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.String()
}

func serialCounts(s *agentStats) string {
	parts := make([]string, 0, len(s.order))
	for _, serial := range s.order {
		short := serial
		if len(short) > 8 {
			short = "…" + short[len(short)-8:]
		}
		parts = append(parts, fmt.Sprintf("%s (%d)", short, s.serials[serial]))
	}
	return strings.Join(parts, ", ")
}
