package clientcert_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"time"

	"github.com/gpuaas/provision/clientcert"
)

// A node API behind Traefik: the ingress at 10.40.0.2 terminates mTLS and
// forwards the node certificate in X-Forwarded-Tls-Client-Cert.
func Example() {
	// The node CA (in production: the step-ca roots the ingress also trusts).
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Node CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	ca, _ := x509.ParseCertificate(caDER)
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	// A node certificate, as step-ca issues it for node gpu-0042.
	nodeKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	nodeDER, _ := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "gpu-0042"}, DNSNames: []string{"gpu-0042"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, nodeKey.Public(), caKey)

	v, err := clientcert.NewVerifier(clientcert.Config{
		Roots:          roots,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.40.0.0/24")},
	})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/nodes/{node_id}/tasks/wait", v.Middleware(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, _ := clientcert.IdentityFromContext(r.Context())
			fmt.Fprintf(w, "tasks for %s", id)
		}),
		clientcert.MiddlewareOptions{
			Expected: func(r *http.Request) string { return r.PathValue("node_id") },
			Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		}))

	call := func(remote, node, forwarded string) {
		r := httptest.NewRequest("GET", "/v1/nodes/"+node+"/tasks/wait", nil)
		r.RemoteAddr = remote
		if forwarded != "" {
			r.Header.Set("X-Forwarded-Tls-Client-Cert", forwarded)
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		body, _ := io.ReadAll(w.Result().Body)
		fmt.Printf("%d %s\n", w.Code, bytes.TrimSpace(body))
	}
	traefik := base64.StdEncoding.EncodeToString(nodeDER) // what Traefik v3 sends
	call("10.40.0.2:41000", "gpu-0042", traefik)          // through the ingress
	call("10.40.0.2:41000", "gpu-0042", "")               // ingress forwarded nothing
	call("10.40.0.2:41000", "gpu-0043", traefik)          // another node's path
	call("198.51.100.9:5000", "gpu-0042", traefik)        // forged header, not via the ingress
	// Output:
	// 200 tasks for gpu-0042
	// 401 {"error":"invalid node identity","mtls_present":false,"reason":"missing"}
	// 401 {"error":"invalid node identity","mtls_present":true,"reason":"identity-mismatch"}
	// 401 {"error":"invalid node identity","mtls_present":true,"reason":"untrusted-proxy"}
}

// The formats and the header each is read from by default, to configure the
// ingress to match.
func ExampleKnownFormats() {
	for _, f := range clientcert.KnownFormats() {
		fmt.Printf("%-15s %s\n", f.Format, f.Header)
	}
	// Output:
	// traefik         X-Forwarded-Tls-Client-Cert
	// traefik-escaped X-Forwarded-Tls-Client-Cert
	// nginx           X-SSL-Client-Cert
	// envoy-xfcc      X-Forwarded-Client-Cert
	// haproxy         X-SSL-Client-Cert-DER
	// caddy           X-Client-Cert
	// aws-alb         X-Amzn-Mtls-Clientcert
	// rfc9440         Client-Cert
}
