// Command pollagent is the smallest node-agent that presents the node's
// identity: it loads pki_dir's cert.pem and key.pem with nodekey (a key
// file or a key inside the TPM alike) and long-polls the node API's
// tasks/wait through the ingress, over one kept-alive connection with TLS
// session resumption, so a TPM signs once per new TLS session rather than
// once per request. It prints one JSON line per poll. provision's tests run
// it as a separate process, through real nginx.
//
//	pollagent -cert /var/lib/provision/pki/cert.pem -key /var/lib/provision/pki/key.pem \
//	  -ca /var/lib/provision/pki/ca.pem -url https://node-api.cp.internal:8443/v1/nodes/gpu-0042/tasks/wait?timeout=1
package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/gpuaas/provision/nodekey"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pollagent:", err)
		os.Exit(1)
	}
}

// counting counts the signatures its key makes (each one a TPM operation
// for a TPM key).
type counting struct {
	crypto.Signer
	n atomic.Int64
}

func (c *counting) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	c.n.Add(1)
	return c.Signer.Sign(r, d, o)
}

func run() error {
	certFile := flag.String("cert", "/var/lib/provision/pki/cert.pem", "the node's certificate chain")
	keyFile := flag.String("key", "/var/lib/provision/pki/key.pem", "the node's key (a key file, or a TPM's TSS2 key file)")
	caFile := flag.String("ca", "/var/lib/provision/pki/ca.pem", "the CA bundle that verifies the ingress")
	tpm := flag.String("tpm", nodekey.DefaultTPM, "the TPM a TPM key signs in (a device, or swtpm:path=<socket>)")
	ownerAuth := flag.String("owner-auth-file", "", "the TPM owner password's file, if the owner hierarchy has one")
	url := flag.String("url", "", "the tasks/wait URL")
	connect := flag.String("connect", "", "dial this host:port instead of the URL's (tests: the ingress on loopback)")
	polls := flag.Int("n", 3, "how many polls")
	flag.Parse()

	opts := []nodekey.Option{nodekey.WithTPM(*tpm)}
	if *ownerAuth != "" {
		opts = append(opts, nodekey.WithOwnerAuthFile(*ownerAuth))
	}
	cert, err := nodekey.LoadX509KeyPair(*certFile, *keyFile, opts...)
	if err != nil {
		return err
	}
	key := &counting{Signer: cert.PrivateKey.(crypto.Signer)}
	cert.PrivateKey = key
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no certificate", *caFile)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12,
			ClientSessionCache: tls.NewLRUClientSessionCache(4)},
		MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute,
	}
	if *connect != "" {
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, *connect)
		}
	}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	for i := 0; i < *polls; i++ {
		if i > 0 && i%2 == 0 {
			tr.CloseIdleConnections() // a new connection: resumed, not signed again
		}
		resp, err := client.Get(*url)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		line := map[string]any{"poll": i + 1, "status": resp.StatusCode, "tls": tls.VersionName(resp.TLS.Version),
			"resumed": resp.TLS.DidResume, "signatures": key.n.Load(), "body": string(body)}
		b, _ := json.Marshal(line)
		fmt.Println(string(b))
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("poll %d: %s", i+1, resp.Status)
		}
	}
	return nil
}
