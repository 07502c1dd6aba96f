package bootstrap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/pipeline"
	"github.com/gpuaas/provision/internal/retry"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/internal/system"
)

// MaxTokenSize bounds the token read: a step-ca one-time token is about a
// kilobyte.
const MaxTokenSize = 64 << 10

func tokenHash(raw string) string {
	sum := sha256.Sum256([]byte(strings.TrimSpace(raw)))
	return hex.EncodeToString(sum[:])
}

// readToken reads the token file (a node path on host) within ctx (the
// run's deadline, cancelled by SIGTERM): its directory is reached under the
// path rule (system.Host.Chase), and a link, FIFO, device or directory at
// the file itself is refused before it could block on it, as is anything
// larger than MaxTokenSize.
func readToken(ctx context.Context, host *system.Host, file string) ([]byte, error) {
	d, name, err := host.Chase(file, system.ChaseOptions{})
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.ReadRegular(ctx, name, MaxTokenSize)
}

// removeToken removes the token file (a burnt token) through its directory
// reached under the path rule, never through a link on the way, and only
// when it still holds the token hashed as h ("" removes whatever regular
// file is there). It reports whether it removed it.
func removeToken(host *system.Host, file, h string) bool {
	d, name, err := host.Chase(file, system.ChaseOptions{})
	if err != nil {
		return false
	}
	defer d.Close()
	if h != "" {
		raw, err := d.ReadRegular(context.Background(), name, MaxTokenSize)
		if err != nil || tokenHash(string(raw)) != h {
			return false
		}
	}
	if st, err := d.Lstat(name); err != nil || !st.Mode().IsRegular() {
		return false
	}
	if d.Remove(name) != nil {
		return false
	}
	d.Sync()
	return true
}

// enrollNode spends the one-time token: a key generated here, a CSR with
// exactly the token's subject and SANs, the sign (retried while the CA or
// the way to it says to come back, see sign), and the issued set written
// aside for the proof. The enrollment marker, written before every attempt
// that may reach the CA, lets a later run tell a token an interrupted run
// burnt from one the CA rejects.
func enrollNode(r *pipeline.Run, g *pipeline.Obtained) *diag.Finding {
	cfg, host := r.Cfg, r.Host
	tok, raw, f := loadToken(r, g.Why)
	if f != nil {
		return f
	}
	h := tokenHash(string(raw))
	prev, _ := state.ReadPending(r.Ctx, r.StateDir)
	if prev.TokenSHA256 == h {
		r.Log.Warn("step", "step", "enroll", "layer", "enroll", "status", "retry-token",
			"message", "this token was already presented by a run that did not finish; trying it once more", "since", prev.Started)
	}
	issued, f := sign(r, tok, h, prev)
	if f != nil {
		return f
	}
	host.Hook.At("after sign")
	g.Set = &credstore.Set{Key: issued.Key, Chain: issued.Chain, Roots: r.Observed().Roots.Bundle()}
	if f := r.WriteAside(g); f != nil {
		f.Summary = "the CA issued a certificate but it could not be saved: " + f.Summary
		f.Remedy = diag.Writable(cfg.Paths.PKIDir) + ", then run again with a fresh token (this one is used)"
		return f
	}
	g.Enrolled, g.Result = true, state.Enrolled
	// The CA has burnt the token; leaving it on disk only leaves a secret
	// lying around (cloud-init keeps its own copy in the instance directory).
	// The token goes before the marker: a run killed in between leaves the
	// marker, and the next run (adopting the set left aside) removes it; the
	// other order could leave the used token forever. Both go while the
	// proof runs (the wait for the token directory's fsync overlaps the
	// proof's for the network) and are done before publish (Run.Settle): a
	// crash during the proof leaves the set aside with the token and marker
	// gone, or the marker alone, or both, which a crash after the set was
	// written could always leave, and the next run adopts the set in each.
	stateDir, tokenFile := r.StateDir, cfg.CA.TokenFile
	r.Meanwhile(func() *diag.Finding {
		if removeToken(host, tokenFile, "") {
			r.Log.Info("step", "step", "enroll", "layer", "enroll", "status", "token-removed", "path", tokenFile)
		}
		os.Remove(filepath.Join(stateDir, state.PendingFile))
		return nil
	})
	r.Log.Info("step", "step", "enroll", "layer", "enroll", "status", "ok", "serial", issued.Chain[0].SerialNumber.String(), "not_after", issued.Chain[0].NotAfter.UTC())
	return nil
}

// attempts is what this run's signs did with the token.
type attempts struct {
	n int
	// reached is when the last retried attempt that may have reached the
	// CA was made (zero: none), and why is how it failed.
	reached time.Time
	why     string
	last    time.Time // when the last attempt was made
}

// sign presents the token until the CA signs, refuses, or the run's
// deadline ends, with the one retry loop (capped full jitter, the CA's
// Retry-After). Only a transient failure is retried: a 429 or 5xx (from
// step-ca or anything in front of it), a connection or TLS handshake that
// failed or timed out. Each retry is safe because step-ca burns a token
// before it validates the request: a re-presented token either succeeds
// (no earlier attempt reached step-ca: a balancer's 503, a dial or
// handshake failure) or is refused 401 "already used", which stops at
// once, so nothing is ever signed twice. Every attempt re-presents this
// same token, after writing the marker.
func sign(r *pipeline.Run, tok *enroll.Token, h string, prev state.Pending) (*enroll.Issued, *diag.Finding) {
	var issued *enroll.Issued
	var err error
	var a attempts
	var f *diag.Finding
	retry.Until(r.Ctx, r.Opts.Policy, r.Opts.Sleep, func(n int) (bool, time.Duration) {
		a.last = r.Host.Time().UTC()
		if werr := state.WritePending(r.StateDir, state.Pending{TokenSHA256: h, Started: a.last}, r.Host.Hook); werr != nil {
			f = markerFailure(r, werr, a)
			return true, 0
		}
		r.Host.Hook.At("before sign")
		a.n++
		o := r.Observed()
		issued, err = o.Client.Sign(r.Ctx, tok, o.Roots)
		var ee *enroll.Error
		if err == nil || !errors.As(err, &ee) || !ee.Transient() || r.Ctx.Err() != nil {
			return true, 0
		}
		if !enroll.NotSent(err) {
			a.reached, a.why = a.last, err.Error()
		}
		r.Log.Warn("step", "step", "enroll", "layer", "enroll", "status", "retry", "attempt", a.n, "message", err.Error())
		return false, ee.RetryAfter
	})
	if f != nil {
		return nil, f
	}
	if err != nil {
		return nil, signFailure(r, err, prev, h, a)
	}
	return issued, nil
}

// markerFailure is a marker that could not be written before an attempt:
// nothing was sent by that attempt.
func markerFailure(r *pipeline.Run, err error, a attempts) *diag.Finding {
	token := "the token is unused"
	if !a.reached.IsZero() {
		token = "this run's earlier attempt may have used the token"
	}
	return &diag.Finding{Layer: diag.State, Owner: diag.Node, Check: "enroll", Summary: "cannot record the enrollment in " + r.Cfg.Paths.StateDir + ": " + err.Error(),
		Remedy: diag.Writable(r.Cfg.Paths.StateDir) + " (nothing more was sent to the CA; " + token + ")"}
}

// loadToken reads and checks the token before anything is sent: a token
// that cannot work for this node is never presented (and so never burnt).
func loadToken(r *pipeline.Run, why string) (*enroll.Token, []byte, *diag.Finding) {
	cfg := r.Cfg
	raw, err := readToken(r.Ctx, r.Host, cfg.CA.TokenFile)
	if err != nil {
		msg := "cannot be read: " + err.Error()
		var ue *system.UnsafeFileError
		switch {
		case errors.Is(err, os.ErrNotExist):
			msg = "does not exist"
		case errors.As(err, &ue):
			msg = "is a " + ue.Kind + ", not a regular file, so provision did not read it"
		}
		f := diag.FromEnroll(&enroll.Error{Kind: enroll.TokenMissing, Op: "read token", Err: errors.New(msg)}, diag.Enroll, cfg.CA.TokenFile)
		f.Summary, f.Check = fmt.Sprintf("re-enrollment needed (%s), but the token file %s %s", why, cfg.CA.TokenFile, msg), "enroll"
		return nil, nil, f
	}
	tok, err := enroll.ParseToken(string(raw))
	if err != nil {
		f := diag.FromEnroll(err, diag.Enroll, cfg.CA.TokenFile)
		f.Summary, f.Check = fmt.Sprintf("re-enrollment needed (%s): %s", why, f.Summary), "enroll"
		return nil, nil, f
	}
	if err := tok.Check(cfg.NodeID, cfg.CA.Fingerprint, r.Host.Time()); err != nil {
		f := diag.FromEnroll(err, diag.Enroll, cfg.CA.TokenFile)
		f.Summary, f.Check = fmt.Sprintf("the token in %s cannot be used (it was not sent, so it is not burnt): %s", cfg.CA.TokenFile, f.Summary), "enroll"
		return nil, nil, f
	}
	return tok, raw, nil
}

// signFailure words the sign's last failure and keeps the marker while
// any attempt, this run's or an earlier run's, may have reached the CA (a
// timeout after sending, an answer): such a token is burnt whatever
// happened. It is removed only when no attempt can have reached it.
func signFailure(r *pipeline.Run, err error, prev state.Pending, h string, a attempts) *diag.Finding {
	f := diag.FromEnroll(err, diag.Enroll, r.Cfg.CA.TokenFile)
	f.Check = "enroll"
	var ee *enroll.Error
	switch {
	case errors.As(err, &ee) && ee.Kind == enroll.TokenRejected && !a.reached.IsZero():
		f.Summary = fmt.Sprintf("the CA rejected the enrollment token (401) as already used: this run's earlier attempt presented this same token at %s and may have reached step-ca (%s), and step-ca burns a token the moment it sees it; nothing was signed twice, and a fresh token is needed",
			a.reached.Format(time.RFC3339), a.why)
	case errors.As(err, &ee) && ee.Kind == enroll.TokenRejected && prev.TokenSHA256 == h:
		f.Summary = fmt.Sprintf("the CA rejected the enrollment token (401): an earlier run presented this same token at %s and did not finish, so the CA has burnt it", prev.Started.Format(time.RFC3339))
	case f.Transient && a.n > 1 && errors.Is(r.Ctx.Err(), context.DeadlineExceeded):
		f.Summary = r.GaveUp(a.n, f.Summary)
	}
	pending := state.Pending{TokenSHA256: h}
	switch {
	case !enroll.NotSent(err):
		return f // the marker written before this attempt stays
	case !a.reached.IsZero():
		pending.Started = a.reached
	case prev.TokenSHA256 == h:
		pending.Started = prev.Started
	default:
		os.Remove(filepath.Join(r.StateDir, state.PendingFile))
		return f
	}
	state.WritePending(r.StateDir, pending, r.Host.Hook)
	return f
}

// forgetBurntToken runs when this run does not enroll. If an enrollment
// marker is left, a run was killed after the CA issued the certificate (now
// installed, or aside and adopted by this run) but before the token and the
// marker were removed: the token is burnt, so it is removed now rather than
// left lying around; a different token (written since) is kept.
func forgetBurntToken(r *pipeline.Run) {
	prev, ok := state.ReadPending(context.Background(), r.StateDir)
	if !ok {
		os.Remove(filepath.Join(r.StateDir, state.PendingFile))
		return
	}
	if prev.TokenSHA256 != "" && removeToken(r.Host, r.Cfg.CA.TokenFile, prev.TokenSHA256) {
		r.Log.Info("step", "step", "assess", "layer", "enroll", "status", "token-removed", "path", r.Cfg.CA.TokenFile,
			"message", "an earlier run enrolled with this token and was interrupted before removing it")
	}
	os.Remove(filepath.Join(r.StateDir, state.PendingFile))
	system.SyncDir(r.StateDir)
}
