package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"

	"github.com/gpuaas/provision/tests/fleet"
)

// signThroughput redeems n tokens with workers concurrent clients straight
// at step-ca (keep-alive connections, CSRs and tokens made beforehand) and
// reports signs per second and CPU per sign. The CPU is this whole
// process's (step-ca and the clients), so per-sign CPU is an upper bound
// for the CA's and signs per core a lower bound.
func signThroughput(fl *fleet.Fleet, n, workers int, newConns bool, out io.Writer) error {
	type job struct {
		csr *x509.CertificateRequest
		tok string
	}
	jobs := make([]job, n)
	for i := range jobs {
		id := fmt.Sprintf("tp-%05d", i)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}, DNSNames: []string{id}}, key)
		if err != nil {
			return err
		}
		csr, _ := x509.ParseCertificateRequest(der)
		tok, err := fl.CP.Token(id)
		if err != nil {
			return err
		}
		jobs[i] = job{csr, tok}
	}
	tr := &http.Transport{Proxy: nil, DialContext: fl.CP.CA.DialContext, MaxIdleConnsPerHost: workers, DisableKeepAlives: newConns,
		TLSClientConfig: &tls.Config{RootCAs: fl.CP.CA.PKI().RootPool(), ServerName: fl.CP.CA.Hostname()}}
	client, err := ca.NewClient(fl.CP.CA.URL(), ca.WithTransport(tr))
	if err != nil {
		return err
	}
	next := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed int
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	t0 := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				if _, err := client.Sign(&api.SignRequest{CsrPEM: api.NewCertificateRequest(j.csr), OTT: j.tok}); err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	took := time.Since(t0)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()+ru1.Stime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	conns := "keep-alive connections"
	if newConns {
		conns = "a new TLS connection per sign, as a node makes"
	}
	fmt.Fprintf(out, "step-ca signs (%s): %d in %s with %d clients (%d failed): %.0f signs/s; CPU (step-ca + clients) %.2f ms per sign, so at least %.0f signs/s per core\n",
		conns, n, took.Round(time.Millisecond), workers, failed, float64(n)/took.Seconds(), float64(cpu.Microseconds())/1000/float64(n), float64(n)/cpu.Seconds())
	return nil
}
