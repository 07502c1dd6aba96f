package controlplane

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gpuaas/provision/clientcert"
)

// TestForwardedIdentity: a plain-HTTP node API that reads identity only from
// the forwarded certificate accepts the node's leaf (no intermediate
// forwarded, as nginx and Caddy send it), and answers every other case with
// 401, the clientcert reason and the right mtls_present.
func TestForwardedIdentity(t *testing.T) {
	t.Parallel()
	const node = "gpu-0300"
	p, err := NewPKI(filepath.Join(t.TempDir(), "pki"), "Fwd")
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewPKI(filepath.Join(t.TempDir(), "other"), "Other")
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewForwardedIdentity(clientcert.Config{Roots: ForwardedRoots(p)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	api, err := NewNodeAPI(NodeAPIOptions{PlainHTTP: true, Identity: src.Identity})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })
	leaf, _ := p.IssueClientCert(node)
	foreign, _ := other.IssueClientCert(node)
	b64 := func(l *Leaf) string { return base64.StdEncoding.EncodeToString(l.Cert.Raw) }

	tests := []struct {
		name        string
		header      map[string]string
		wantStatus  int
		wantPresent bool
		wantReason  string
	}{
		{"caddy leaf only", map[string]string{"X-Client-Cert": b64(leaf)}, 204, true, ""},
		{"nothing forwarded", nil, 401, false, "missing"},
		{"not base64", map[string]string{"X-Client-Cert": "%%%"}, 401, true, "malformed"},
		{"another CA", map[string]string{"X-Client-Cert": b64(foreign)}, 401, true, "unknown-authority"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, api.URL()+strings.Replace(WaitPath, "{node_id}", node, 1)+"?timeout=0.05", nil)
			req.Host = DefaultAPIHostname
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d %s, want %d", resp.StatusCode, body, tc.wantStatus)
			}
			if tc.wantStatus != 401 {
				return
			}
			var b struct {
				Error       string `json:"error"`
				MTLSPresent bool   `json:"mtls_present"`
				Reason      string `json:"reason"`
			}
			if err := json.Unmarshal(body, &b); err != nil {
				t.Fatalf("401 body %q: %v", body, err)
			}
			if b.Error != "invalid node identity" || b.MTLSPresent != tc.wantPresent || b.Reason != tc.wantReason {
				t.Fatalf("401 body %+v, want mtls_present=%v reason=%q", b, tc.wantPresent, tc.wantReason)
			}
			rej := api.Rejections()
			if last := rej[len(rej)-1]; last.MTLSPresent != tc.wantPresent || last.Reason != tc.wantReason {
				t.Fatalf("logged rejection %+v", last)
			}
		})
	}
}
