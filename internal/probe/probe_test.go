package probe_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/tests/controlplane"
)

// The probe's job is to record how far the exchange got; diag's tests check
// the classification built on top. These pin the record itself against real
// loopback servers (certificates from tests/controlplane's crypto/x509 PKI).

const host = "node-api.probe.internal"

type fixture struct {
	pki, other *controlplane.PKI
	node       tls.Certificate
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	p, err := controlplane.NewPKI(dir+"/cp", "Probe")
	if err != nil {
		t.Fatal(err)
	}
	o, err := controlplane.NewPKI(dir+"/other", "Other")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := p.IssueClientCert("gpu-1")
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{pki: p, other: o, node: leaf.TLSCertificate()}
}

func (f *fixture) serverConfig(t *testing.T, clientCAs *controlplane.PKI, ver uint16) *tls.Config {
	t.Helper()
	leaf, err := f.pki.IssueServerCert(host)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: clientCAs.RootPool(), MinVersion: ver, MaxVersion: ver}
}

func serve(t *testing.T, cfg *tls.Config, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: cfg, ErrorLog: log.New(io.Discard, "", 0)}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// dialTo sends every connection to addr, whatever name was asked: the URL
// keeps the hostname, so SNI and Host are the real ones.
func dialTo(addr string) func(ctx context.Context, network, _ string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

func (f *fixture) do(addr string, mod func(*probe.Request)) *probe.Result {
	r := probe.Request{
		URL: "https://" + host + ":8443/v1/nodes/gpu-1/tasks/wait?timeout=1", Cert: &f.node, Roots: f.pki.RootPool(),
		Dial: dialTo(addr), Timeout: 3 * time.Second, Wait: time.Second,
	}
	if mod != nil {
		mod(&r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return probe.Do(ctx, r)
}

func TestDoRecordsHowFarItGot(t *testing.T) {
	f := newFixture(t)
	refused := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		a := ln.Addr().String()
		ln.Close()
		return a
	}()
	closer := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				// Read exactly the ClientHello record, then close: unread
				// bytes would turn the FIN into a reset.
				hdr := make([]byte, 5)
				if _, err := io.ReadFull(c, hdr); err == nil {
					io.CopyN(io.Discard, c, int64(hdr[3])<<8|int64(hdr[4]))
				}
				c.Close()
			}
		}()
		return ln.Addr().String()
	}()
	ok := serve(t, f.serverConfig(t, f.pki, tls.VersionTLS13), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"t1"}`)
	})
	wrongCA13 := serve(t, f.serverConfig(t, f.other, tls.VersionTLS13), func(http.ResponseWriter, *http.Request) {})
	wrongCA12 := serve(t, f.serverConfig(t, f.other, tls.VersionTLS12), func(http.ResponseWriter, *http.Request) {})

	tests := []struct {
		name           string
		addr           string
		stage          probe.Stage
		handshakeErr   bool // the error is a *probe.HandshakeError
		errContains    string
		serverCertSeen bool
		certAsked      bool
		status         int
	}{
		{"refused", refused, probe.StageNone, false, "refused", false, false, 0},
		{"closed after ClientHello", closer, probe.StageConnected, true, "EOF", false, false, 0},
		{"TLS 1.3 client cert rejected: handshake completes, alert on first read", wrongCA13, probe.StageHandshake, false, "remote error: tls: unknown certificate authority", true, true, 0},
		{"TLS 1.2 client cert rejected: handshake fails", wrongCA12, probe.StageClientCert, true, "remote error: tls: unknown certificate authority", true, true, 0},
		{"200", ok, probe.StageBody, false, "", true, true, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(tt.addr, nil)
			if r.Stage != tt.stage {
				t.Errorf("stage %d, want %d (err %v)", r.Stage, tt.stage, r.Err)
			}
			var hs *probe.HandshakeError
			if got := errorsAs(r.Err, &hs); got != tt.handshakeErr {
				t.Errorf("HandshakeError %v, want %v (err %v)", got, tt.handshakeErr, r.Err)
			}
			if tt.errContains == "" && r.Err != nil || tt.errContains != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tt.errContains)) {
				t.Errorf("err %v, want containing %q", r.Err, tt.errContains)
			}
			if r.ServerCertSeen != tt.serverCertSeen || r.ClientCertAsked != tt.certAsked || r.Status != tt.status {
				t.Errorf("seen %v asked %v status %d, want %v %v %d", r.ServerCertSeen, r.ClientCertAsked, r.Status, tt.serverCertSeen, tt.certAsked, tt.status)
			}
			if tt.certAsked && !r.ClientCertSent {
				t.Error("the node's certificate was not sent")
			}
			if tt.certAsked && (len(r.AcceptableCAs) == 0) {
				t.Error("the server's acceptable client CAs were not recorded")
			}
			if r.Host != host || r.URL == "" {
				t.Errorf("host %q url %q", r.Host, r.URL)
			}
		})
	}
	// The acceptable-CA list names the CA the server trusts, so an operator
	// can compare it with the node's issuer.
	r := f.do(wrongCA13, nil)
	if len(r.AcceptableCAs) == 0 || !strings.Contains(r.AcceptableCAs[0], "Other Root CA") {
		t.Errorf("acceptable CAs %v, want the Other root", r.AcceptableCAs)
	}
}

func errorsAs(err error, target **probe.HandshakeError) bool {
	for err != nil {
		if h, ok := err.(*probe.HandshakeError); ok {
			*target = h
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

func TestDoKeepsWhatTheServerSaid(t *testing.T) {
	f := newFixture(t)
	big := strings.Repeat("x", probe.MaxTask+1000)
	var gotAccept, gotUA string
	addr := serve(t, f.serverConfig(t, f.pki, tls.VersionTLS13), func(w http.ResponseWriter, r *http.Request) {
		gotAccept, gotUA = r.Header.Get("Accept"), r.Header.Get("User-Agent")
		switch r.URL.Query().Get("case") {
		case "redirect":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "big":
			io.WriteString(w, big)
		case "big-error":
			w.WriteHeader(500)
			io.WriteString(w, big)
		}
	})
	r := f.do(addr, func(r *probe.Request) { r.URL += "&case=redirect" })
	if r.Status != http.StatusFound || r.Header.Get("Location") != "/elsewhere" {
		t.Errorf("a redirect must be reported, not followed: status %d location %q", r.Status, r.Header.Get("Location"))
	}
	if gotAccept != "application/json" || gotUA != "provision" {
		t.Errorf("request headers Accept %q User-Agent %q", gotAccept, gotUA)
	}
	r = f.do(addr, func(r *probe.Request) { r.URL += "&case=big" })
	if len(r.Body) != probe.MaxTask || !r.BodyTruncated || r.Stage != probe.StageResponse || r.BodyLimit() != probe.MaxTask {
		t.Errorf("body %d bytes truncated %v stage %s, want capped at %d, truncated, and not StageBody", len(r.Body), r.BodyTruncated, r.Stage, probe.MaxTask)
	}
	r = f.do(addr, func(r *probe.Request) { r.URL += "&case=big-error" })
	if len(r.Body) != probe.MaxBody || !r.BodyTruncated || r.Status != 500 || r.BodyLimit() != probe.MaxBody {
		t.Errorf("an error answer: body %d bytes truncated %v status %d, want capped at %d", len(r.Body), r.BodyTruncated, r.Status, probe.MaxBody)
	}
	if r.Date.IsZero() {
		t.Error("the Date header was not recorded")
	}
}

func TestDoBadURL(t *testing.T) {
	r := probe.Do(context.Background(), probe.Request{URL: "https://[::1", Timeout: time.Second})
	if r.Err == nil || r.Stage != probe.StageNone {
		t.Errorf("bad URL: err %v stage %d", r.Err, r.Stage)
	}
}

// TestTaskFrom is issue 24 item 3: the ID went through a float
// (12345678901234567891 and ...892 both became 1.2345678901234567e+19), and
// a body that is not a JSON object (null, a list, text) counted as a task.
// The ID is the exact bytes the API sent (a string unquoted, a number as
// written), and only a JSON object is a task.
func TestTaskFrom(t *testing.T) {
	tests := []struct {
		body, id, raw string
		task          bool
	}{
		{`{"id":"t-1","kind":"reboot"}`, "t-1", `{"id":"t-1","kind":"reboot"}`, true},
		{"  {\"id\": 42}\n", "42", `{"id": 42}`, true},
		{`{"id":12345678901234567891}`, "12345678901234567891", `{"id":12345678901234567891}`, true},
		{`{"id":12345678901234567892}`, "12345678901234567892", `{"id":12345678901234567892}`, true},
		{`{"id":1e3}`, "1e3", `{"id":1e3}`, true},
		{`{"id":-0.50}`, "-0.50", `{"id":-0.50}`, true},
		{`{"id":"12345678901234567891"}`, "12345678901234567891", `{"id":"12345678901234567891"}`, true},
		{`{"id":"caf\u00e9"}`, "café", `{"id":"caf\u00e9"}`, true},
		{`{"id":true}`, "", `{"id":true}`, true},
		{`{"id":{"n":1}}`, "", `{"id":{"n":1}}`, true},
		{`{"id":null}`, "", `{"id":null}`, true},
		{`{"kind":"no id"}`, "", `{"kind":"no id"}`, true},
		{`[1,2]`, "", `[1,2]`, false},
		{`null`, "", `null`, false},
		{`"reboot"`, "", `"reboot"`, false},
		{`7`, "", `7`, false},
		{`not json`, "", `not json`, false},
		{`{"id":"t-1"} trailing`, "", `{"id":"t-1"} trailing`, false},
		{``, "", ``, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.body), func(t *testing.T) {
			got := probe.TaskFrom([]byte(tt.body))
			if got.ID != tt.id || string(got.Raw) != tt.raw {
				t.Errorf("TaskFrom(%q) = id %q raw %s, want %q %s", tt.body, got.ID, got.Raw, tt.id, tt.raw)
			}
			if probe.IsTask([]byte(tt.body)) != tt.task {
				t.Errorf("IsTask(%q) = %v, want %v", tt.body, !tt.task, tt.task)
			}
			r := &probe.Result{Status: 200, Stage: probe.StageBody, Body: []byte(tt.body)}
			if _, ok := r.HandedTask(); ok != tt.task {
				t.Errorf("HandedTask for a 200 %q = %v, want %v", tt.body, ok, tt.task)
			}
		})
	}
}

// TestDoRecordsWhenEachStageWasReached: every stage an exchange crossed has
// the time it was reached, in the order of the stages, within the whole
// exchange; stages it did not reach have none.
func TestDoRecordsWhenEachStageWasReached(t *testing.T) {
	f := newFixture(t)
	ok := serve(t, f.serverConfig(t, f.pki, tls.VersionTLS13), func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	wrongCA := serve(t, f.serverConfig(t, f.other, tls.VersionTLS13), func(http.ResponseWriter, *http.Request) {})
	for _, tc := range []struct {
		addr    string
		reached probe.Stage
	}{{ok, probe.StageBody}, {wrongCA, probe.StageHandshake}} {
		r := f.do(tc.addr, nil)
		if r.Stage != tc.reached {
			t.Fatalf("reached %s, want %s (%v)", r.Stage, tc.reached, r.Err)
		}
		prev := time.Duration(0)
		for s := probe.StageConnected; s <= probe.StageBody; s++ {
			at := r.StageAt[s]
			switch {
			case s > r.Stage && at != 0:
				t.Errorf("%s: not reached, but timed at %v", s, at)
			case s <= r.Stage && s != probe.StageServerCert && at == 0:
				t.Errorf("%s: reached (the exchange got to %s) but not timed", s, r.Stage)
			case at != 0 && (at < prev || at > r.Duration):
				t.Errorf("%s at %v: before the stage before it (%v) or after the end (%v)", s, at, prev, r.Duration)
			}
			if at != 0 {
				prev = at
			}
		}
	}
}

// TestAt: a stage not reached is as far as the exchange got before it.
func TestAt(t *testing.T) {
	var r probe.Result
	r.StageAt[probe.StageConnected] = 3 * time.Millisecond
	r.StageAt[probe.StageServerVerified] = 9 * time.Millisecond
	for _, tc := range []struct {
		s    probe.Stage
		want time.Duration
	}{
		{probe.StageNone, 0}, {probe.StageConnected, 3 * time.Millisecond}, {probe.StageServerCert, 3 * time.Millisecond},
		{probe.StageServerVerified, 9 * time.Millisecond}, {probe.StageBody, 9 * time.Millisecond}, {probe.Stage(99), 9 * time.Millisecond},
	} {
		if got := r.At(tc.s); got != tc.want {
			t.Errorf("At(%s) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
