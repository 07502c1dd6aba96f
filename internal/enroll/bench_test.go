package enroll_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/tests/controlplane"
)

// BenchmarkJudgeCRL: judging a node's certificate against a CRL of n
// revoked certificates (the node not among them: the whole list is
// read), parse and signature included; b.SetBytes reports the CRL's size.
func BenchmarkJudgeCRL(b *testing.B) {
	at := time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)
	p, err := controlplane.NewPKIAt(b.TempDir(), controlplane.CAName, at)
	if err != nil {
		b.Fatal(err)
	}
	leaf, err := p.IssueClientCert(nodeID)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{0, 1000, 100000} {
		rl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: at.Add(-time.Minute), NextUpdate: at.Add(time.Hour)}
		for i := range n {
			serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
			rl.RevokedCertificateEntries = append(rl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: at.Add(-time.Duration(i) * time.Second), ReasonCode: 4})
		}
		der, err := x509.CreateRevocationList(rand.Reader, rl, p.Intermediate, p.IntermediateKey)
		if err != nil {
			b.Fatal(err)
		}
		chain := []*x509.Certificate{leaf.Cert, p.Intermediate}
		b.Run(fmt.Sprintf("revoked=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(der)))
			for b.Loop() {
				if r := enroll.JudgeCRL(der, chain, []*x509.Certificate{p.Root}, at); r.Status != enroll.NotRevoked {
					b.Fatalf("%s: %s", r.Status, r.Reason)
				}
			}
		})
	}
}

// BenchmarkRenewals: one renewal against the real in-process step-ca, by
// mTLS (Renew) and by token (RenewExpired, here with a valid certificate:
// the CA does the same work for an expired one), connection included.
func BenchmarkRenewals(b *testing.B) {
	s, err := controlplane.StartStepCA(controlplane.StepCAOptions{Dir: b.TempDir(), AllowRenewalAfterExpiry: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c, _ := caClient(b, s, s.Fingerprint())
	roots, err := c.FetchRoots(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	raw, err := s.Token(nodeID)
	if err != nil {
		b.Fatal(err)
	}
	tok, err := enroll.ParseToken(raw)
	if err != nil {
		b.Fatal(err)
	}
	issued, err := c.Sign(context.Background(), tok, roots)
	if err != nil {
		b.Fatal(err)
	}
	cert := tlsCert(issued)
	b.Run("mtls", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Renew(context.Background(), cert, roots, false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("token", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.RenewExpired(context.Background(), cert, roots); err != nil {
				b.Fatal(err)
			}
		}
	})
}
