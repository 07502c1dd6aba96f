package lifecycle_test

import (
	"crypto/x509"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/lifecycle"
	"github.com/gpuaas/provision/tests/controlplane"
)

// TestJudge pins the verdict for each fact alone and for the combinations
// that decide between actions: the action is the largest of the reasons',
// the reasons come most severe first, and a key that once was readable by
// others stays a reason after its mode is fixed.
func TestJudge(t *testing.T) {
	// Every certificate is built from the same fixed clock the verdict is
	// judged at, so the table holds on any day it runs.
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	p, err := controlplane.NewPKIAt(dir+"/cp", "Judge", now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := controlplane.NewPKIAt(dir+"/other", "Other", now)
	if err != nil {
		t.Fatal(err)
	}
	set := func(from *controlplane.PKI, cn string, nb, na time.Duration, bundle ...*x509.Certificate) *credstore.Set {
		l, err := from.IssueLeaf(controlplane.LeafRequest{CommonName: cn, DNSNames: []string{cn}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			NotBefore: now.Add(nb), NotAfter: now.Add(na)})
		if err != nil {
			t.Fatal(err)
		}
		if bundle == nil {
			bundle = []*x509.Certificate{from.Root}
		}
		return &credstore.Set{Key: l.Key, Chain: []*x509.Certificate{l.Cert, l.Intermediate}, Roots: bundle, KeyMode: 0o600, DirMode: 0o700}
	}
	healthy := func() *credstore.Set { return set(p, "gpu-1", -time.Hour, 23*time.Hour) }
	roots := []*x509.Certificate{p.Root}
	tests := []struct {
		name    string
		in      lifecycle.Input
		action  lifecycle.Action
		reasons []lifecycle.Reason
	}{
		{"healthy", lifecycle.Input{Set: healthy()}, lifecycle.Keep, nil},
		{"missing", lifecycle.Input{LoadErr: fmt.Errorf("x: %w", credstore.ErrNotFound)}, lifecycle.Reenroll, []lifecycle.Reason{lifecycle.Missing}},
		{"unreadable", lifecycle.Input{LoadErr: errors.New("garbled")}, lifecycle.Reenroll, []lifecycle.Reason{lifecycle.Unreadable}},
		{"key mismatch", lifecycle.Input{Set: func() *credstore.Set { s := healthy(); s.Key = healthy().Key; return s }()}, lifecycle.Reenroll, []lifecycle.Reason{lifecycle.KeyMismatch}},
		{"wrong node", lifecycle.Input{Set: set(p, "gpu-2", -time.Hour, 23*time.Hour)}, lifecycle.Reenroll, []lifecycle.Reason{lifecycle.WrongNode}},
		{"expired", lifecycle.Input{Set: set(p, "gpu-1", -25*time.Hour, -time.Hour)}, lifecycle.Reenroll, []lifecycle.Reason{lifecycle.Expired}},
		{"not yet valid", lifecycle.Input{Set: set(p, "gpu-1", time.Hour, 25*time.Hour)}, lifecycle.Reenroll, []lifecycle.Reason{lifecycle.NotYetValid}},
		{"other CA", lifecycle.Input{Set: set(other, "gpu-1", -time.Hour, 23*time.Hour)}, lifecycle.Reenroll, []lifecycle.Reason{lifecycle.OtherCA, lifecycle.BundleStale}},
		{"past renewal (17h of 24h)", lifecycle.Input{Set: set(p, "gpu-1", -17*time.Hour, 7*time.Hour)}, lifecycle.Renew, []lifecycle.Reason{lifecycle.PastRenewal}},
		{"just before renewal (15h of 24h)", lifecycle.Input{Set: set(p, "gpu-1", -15*time.Hour, 9*time.Hour)}, lifecycle.Keep, nil},
		{"renew fraction 0.5 at 13h", lifecycle.Input{Set: set(p, "gpu-1", -13*time.Hour, 11*time.Hour), RenewFraction: 0.5}, lifecycle.Renew, []lifecycle.Reason{lifecycle.PastRenewal}},
		{"key 0644", lifecycle.Input{Set: func() *credstore.Set { s := healthy(); s.KeyMode = 0o644; return s }()}, lifecycle.Tighten, []lifecycle.Reason{lifecycle.KeyExposed}},
		{"key was exposed", lifecycle.Input{Set: healthy(), Exposed: true}, lifecycle.Tighten, []lifecycle.Reason{lifecycle.KeyWasExposed}},
		{"dir 0755", lifecycle.Input{Set: func() *credstore.Set { s := healthy(); s.DirMode = 0o755; return s }()}, lifecycle.Tighten, []lifecycle.Reason{lifecycle.DirOpen}},
		// paths.key_group: the key 0640 and pki_dir 0750 for that group only.
		{"key group: key 0640 and dir 0750 of the group", lifecycle.Input{Access: credstore.GroupAccess(4242), Set: func() *credstore.Set {
			s := healthy()
			s.KeyMode, s.KeyGID, s.DirMode, s.DirGID = 0o640, 4242, 0o750, 4242
			return s
		}()}, lifecycle.Keep, nil},
		{"key group: key 0640 of another group", lifecycle.Input{Access: credstore.GroupAccess(4242), Set: func() *credstore.Set {
			s := healthy()
			s.KeyMode, s.KeyGID = 0o640, 100
			return s
		}()}, lifecycle.Tighten, []lifecycle.Reason{lifecycle.KeyExposed}},
		{"key group: key 0644", lifecycle.Input{Access: credstore.GroupAccess(4242), Set: func() *credstore.Set {
			s := healthy()
			s.KeyMode, s.KeyGID = 0o644, 4242
			return s
		}()}, lifecycle.Tighten, []lifecycle.Reason{lifecycle.KeyExposed}},
		// The modes are right but the group cannot get there (a closed
		// state_dir, as credstore.Access.Reach found it): a mode to fix,
		// no token needed.
		{"key group: the way to the key closed", lifecycle.Input{Access: credstore.GroupAccess(4242), Unreachable: errors.New("group 4242 cannot search /var/lib/provision"), Set: func() *credstore.Set {
			s := healthy()
			s.KeyMode, s.KeyGID, s.DirMode, s.DirGID = 0o640, 4242, 0o750, 4242
			return s
		}()}, lifecycle.Tighten, []lifecycle.Reason{lifecycle.KeyUnreachable}},
		{"no key group: key 0640", lifecycle.Input{Set: func() *credstore.Set {
			s := healthy()
			s.KeyMode, s.KeyGID = 0o640, 4242
			return s
		}()}, lifecycle.Tighten, []lifecycle.Reason{lifecycle.KeyExposed}},
		{"TPM key lost (cleared, or another TPM)", lifecycle.Input{Set: healthy(), KeyLost: "TPM_RC_INTEGRITY"}, lifecycle.Reenroll, []lifecycle.Reason{lifecycle.KeyLost}},
		{"TPM key lost and past renewal: re-enroll, no renewal", lifecycle.Input{Set: set(p, "gpu-1", -20*time.Hour, 4*time.Hour), KeyLost: "TPM_RC_INTEGRITY"},
			lifecycle.Reenroll, []lifecycle.Reason{lifecycle.KeyLost}},
		{"bundle from another CA", lifecycle.Input{Set: set(p, "gpu-1", -time.Hour, 23*time.Hour, other.Root)}, lifecycle.Tighten, []lifecycle.Reason{lifecycle.BundleStale}},
		{"roots unknown", lifecycle.Input{Set: healthy(), Roots: []*x509.Certificate{}}, lifecycle.Keep, []lifecycle.Reason{lifecycle.RootsUnknown}},
		{"exposed and past renewal: renew first", lifecycle.Input{Set: func() *credstore.Set { s := set(p, "gpu-1", -20*time.Hour, 4*time.Hour); s.KeyMode = 0o640; return s }()},
			lifecycle.Renew, []lifecycle.Reason{lifecycle.PastRenewal, lifecycle.KeyExposed}},
		// The CA's clock is judged at the instant its answer arrived: an hour
		// old, the reading is still no skew; a reading without its arrival
		// time is no reading.
		{"CA clock read an hour ago, agreeing then", lifecycle.Input{Set: healthy(), CADate: now.Add(-time.Hour), CADateAt: now.Add(-time.Hour + 2*time.Second)}, lifecycle.Keep, nil},
		{"CA clock 3 minutes behind when read", lifecycle.Input{Set: healthy(), CADate: now.Add(-time.Hour - 3*time.Minute), CADateAt: now.Add(-time.Hour)}, lifecycle.Keep, []lifecycle.Reason{lifecycle.ClockSkewed}},
		{"CA Date without its arrival time", lifecycle.Input{Set: healthy(), CADate: now.Add(-time.Hour)}, lifecycle.Keep, nil},
		{"expired and exposed: re-enroll first, no renewal", lifecycle.Input{Set: func() *credstore.Set { s := set(p, "gpu-1", -25*time.Hour, -time.Hour); s.KeyMode = 0o644; return s }()},
			lifecycle.Reenroll, []lifecycle.Reason{lifecycle.Expired, lifecycle.KeyExposed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.NodeID, in.Now = "gpu-1", now
			switch {
			case tt.name == "roots unknown":
				in.Roots = nil
			case in.Roots == nil:
				in.Roots = roots
			}
			v := lifecycle.Judge(in)
			if v.Action != tt.action || !reflect.DeepEqual(v.Reasons, tt.reasons) {
				t.Fatalf("Judge = %s %v, want %s %v (detail %v)", v.Action, v.Reasons, tt.action, tt.reasons, v.Detail)
			}
			for _, r := range v.Reasons {
				if v.Detail[r] == "" {
					t.Errorf("reason %s has no detail", r)
				}
			}
		})
	}
}

// TestSchedule: the one answer to "when is it due?": the renewal point at
// the fraction of the lifetime (2/3 by default: NotBefore + 16h of 24h), the due time within the splay (capped to
// half the room left before expiry, fixed per certificate), the last
// quarter, and Due/InLastQuarter at each side of them; and the root the
// chain came from, found by signature even for an expired certificate.
func TestSchedule(t *testing.T) {
	nb := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	p, err := controlplane.NewPKIAt(t.TempDir(), "S", nb)
	if err != nil {
		t.Fatal(err)
	}
	l, err := p.IssueLeaf(controlplane.LeafRequest{CommonName: "n", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: nb, NotAfter: nb.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	set := &credstore.Set{Key: l.Key, Chain: []*x509.Certificate{l.Cert, l.Intermediate}, Roots: []*x509.Certificate{p.Root}, KeyMode: 0o600, DirMode: 0o700}
	tests := []struct {
		name          string
		frac          float64
		splay         time.Duration
		after, dueMax time.Duration // from NotBefore
	}{
		{"no splay", 0, 0, 16 * time.Hour, 16 * time.Hour},
		{"an hour of splay", 0, time.Hour, 16 * time.Hour, 17 * time.Hour},
		{"a splay longer than half the room is capped", 0, 24 * time.Hour, 16 * time.Hour, 20 * time.Hour},
		{"renew.fraction 0.5", 0.5, 0, 12 * time.Hour, 12 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := lifecycle.Input{Set: set, NodeID: "n", Now: nb.Add(time.Hour), RenewFraction: tt.frac, Splay: tt.splay}
			s := lifecycle.Judge(in).Schedule
			if !s.RenewAfter.Equal(nb.Add(tt.after)) || s.DueAt.Before(s.RenewAfter) || s.DueAt.After(nb.Add(tt.dueMax)) {
				t.Fatalf("renewal point %s due %s, want %s and due within %s", s.RenewAfter, s.DueAt, nb.Add(tt.after), nb.Add(tt.dueMax))
			}
			if again := lifecycle.Judge(in).Schedule; !again.DueAt.Equal(s.DueAt) {
				t.Errorf("due %s, then %s: the splay is not fixed per certificate", s.DueAt, again.DueAt)
			}
			if !s.LastQuarter.Equal(nb.Add(18*time.Hour)) || !s.NotAfter.Equal(nb.Add(24*time.Hour)) {
				t.Errorf("last quarter %s, expiry %s", s.LastQuarter, s.NotAfter)
			}
			if s.Due(s.DueAt.Add(-time.Second)) || !s.Due(s.DueAt) || s.InLastQuarter(s.LastQuarter.Add(-time.Second)) || !s.InLastQuarter(s.LastQuarter) {
				t.Error("Due or InLastQuarter wrong at their boundary")
			}
		})
	}
	if (lifecycle.Schedule{}).Due(nb) {
		t.Error("no certificate is due")
	}
	other, err := controlplane.NewPKIAt(t.TempDir(), "O", nb)
	if err != nil {
		t.Fatal(err)
	}
	if r := lifecycle.IssuingRoot(set.Chain, []*x509.Certificate{other.Root, p.Root}); r == nil || !r.Equal(p.Root) {
		t.Errorf("IssuingRoot did not find the root that issued the chain")
	}
	if r := lifecycle.IssuingRoot(set.Chain, []*x509.Certificate{other.Root}); r != nil {
		t.Errorf("IssuingRoot found %s among another CA's roots", r.Subject)
	}
}
