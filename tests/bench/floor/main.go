// Command floor is the bench's floor: the least a node can do to go from a
// one-time token to a proved mTLS poll, with nothing else. It fetches the
// root pinned by fingerprint (one unverified connection, checked by hash),
// generates a P-256 key, redeems the token with the same smallstep ca
// client provision uses (one sign over a connection trusting that root),
// writes key and certificate with fsync, and makes one mTLS GET of the
// tasks/wait URL. No hosts file, no current-roots fetch, no checks, no
// receipt, no retries: a comparison point, not a tool.
//
//	floor -ca URL -fp HEX -token FILE -api URL -dir DIR
//
// Every hostname resolves to 127.0.0.1 (the bench runs on loopback).
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"
)

func main() {
	caURL := flag.String("ca", "", "step-ca URL")
	fp := flag.String("fp", "", "root fingerprint (hex SHA-256)")
	tokenFile := flag.String("token", "", "one-time token file")
	apiURL := flag.String("api", "", "full tasks/wait URL")
	dir := flag.String("dir", "", "where key.pem and cert.pem go")
	flag.Parse()
	if err := run(*caURL, *fp, *tokenFile, *apiURL, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func dial(ctx context.Context, network, addr string) (net.Conn, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
}

func transport(c *tls.Config) *http.Transport {
	return &http.Transport{Proxy: nil, DialContext: dial, TLSClientConfig: c}
}

func run(caURL, fp, tokenFile, apiURL, dir string) error {
	ca.DisableIdentity = true
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	pool, err := pinnedRoot(caURL, fp)
	if err != nil {
		return err
	}
	key, chain, err := sign(caURL, pool, strings.TrimSpace(string(tok)))
	if err != nil {
		return err
	}
	if err := writeKeyAndCert(dir, key, chain); err != nil {
		return err
	}
	return poll(apiURL, dir, pool)
}

// pinnedRoot is step 1, the pinned root: one unverified fetch, checked by
// hash. It returns a pool holding that root.
func pinnedRoot(caURL, fp string) (*x509.CertPool, error) {
	insecure := &http.Client{Transport: transport(&tls.Config{InsecureSkipVerify: true})} //nolint:gosec // pinned root fetch, checked by fingerprint below
	resp, err := insecure.Get(strings.TrimSuffix(caURL, "/") + "/root/" + fp)
	if err != nil {
		return nil, err
	}
	var rr api.RootResponse
	err = json.NewDecoder(resp.Body).Decode(&rr)
	resp.Body.Close()
	if err != nil || rr.RootPEM.Certificate == nil {
		return nil, fmt.Errorf("root: %v", err)
	}
	sum := sha256.Sum256(rr.RootPEM.Raw)
	if hex.EncodeToString(sum[:]) != fp {
		return nil, fmt.Errorf("root fingerprint mismatch")
	}
	pool := x509.NewCertPool()
	pool.AddCert(rr.RootPEM.Certificate)
	return pool, nil
}

// sign is steps 2 and 3: a P-256 key and a CSR for the token's subject and
// SANs, then one sign with step's client over a connection trusting pool.
// It returns the key and the certificate chain, leaf first.
func sign(caURL string, pool *x509.CertPool, tok string) (*ecdsa.PrivateKey, []api.Certificate, error) {
	u, _ := http.NewRequest(http.MethodGet, caURL, nil)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sub, sans := tokenClaims(tok)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: sub}, DNSNames: sans}, key)
	if err != nil {
		return nil, nil, err
	}
	csr, _ := x509.ParseCertificateRequest(der)
	client, err := ca.NewClient(caURL, ca.WithTransport(transport(&tls.Config{RootCAs: pool, ServerName: u.URL.Hostname()})), ca.WithTimeout(10*time.Second))
	if err != nil {
		return nil, nil, err
	}
	sr, err := client.Sign(&api.SignRequest{CsrPEM: api.NewCertificateRequest(csr), OTT: tok})
	if err != nil {
		return nil, nil, fmt.Errorf("sign: %w", err)
	}
	return key, sr.CertChainPEM, nil
}

// tokenClaims reads the subject and SANs out of the token's payload,
// unverified (the CA verifies it); empty when the token is not a JWT.
func tokenClaims(tok string) (sub string, sans []string) {
	var claims struct {
		Sub  string   `json:"sub"`
		SANs []string `json:"sans"`
	}
	if parts := strings.Split(tok, "."); len(parts) == 3 {
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		json.Unmarshal(b, &claims)
	}
	return claims.Sub, claims.SANs
}

// writeKeyAndCert is step 4: key.pem and cert.pem in dir, each written and
// fsynced, then the directory.
func writeKeyAndCert(dir string, key *ecdsa.PrivateKey, certs []api.Certificate) error {
	kb, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	var chain []byte
	for _, c := range certs {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"key.pem", keyPEM}, {"cert.pem", chain}} {
		if err := writeSync(filepath.Join(dir, f.name), f.data); err != nil {
			return err
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	d.Sync()
	d.Close()
	return nil
}

// poll is step 5: one mTLS GET of the tasks/wait URL, with the certificate
// read back from disk; 200 or 204 is success.
func poll(apiURL, dir string, pool *x509.CertPool) error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return err
	}
	pu, _ := http.NewRequest(http.MethodGet, apiURL, nil)
	mtls := &http.Client{Transport: transport(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: pu.URL.Hostname()})}
	resp, err := mtls.Get(apiURL)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 && resp.StatusCode != 204 {
		return fmt.Errorf("tasks/wait: %s", resp.Status)
	}
	return nil
}

func writeSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
