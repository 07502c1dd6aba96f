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

// readToken reads the token file within ctx (the run's deadline, cancelled by
// SIGTERM), refusing a link, FIFO, device or directory before it could block
// on it, and anything larger than MaxTokenSize.
func readToken(ctx context.Context, path string) ([]byte, error) {
	return system.ReadRegular(ctx, path, MaxTokenSize)
}

// enrollNode spends the one-time token: a key generated here, a CSR with
// exactly the token's subject and SANs, the sign, and the issued set
// written aside for the proof. The enrollment marker, written before the
// sign, lets a later run tell a token an interrupted run burnt from one the
// CA rejects.
func enrollNode(r *pipeline.Run) *diag.Finding {
	cfg, host := r.Cfg, r.Host
	tok, raw, f := loadToken(r)
	if f != nil {
		return f
	}
	h := tokenHash(string(raw))
	prev, _ := state.ReadPending(r.Ctx, r.StateDir)
	if prev.TokenSHA256 == h {
		r.Log.Warn("step", "step", "enroll", "layer", "enroll", "status", "retry-token",
			"message", "this token was already presented by a run that did not finish; trying it once more", "since", prev.Started)
	}
	if err := state.WritePending(r.StateDir, state.Pending{TokenSHA256: h, Started: host.Time().UTC()}, host.Hook); err != nil {
		return &diag.Finding{Layer: diag.State, Owner: diag.Node, Check: "enroll", Summary: "cannot record the enrollment in " + cfg.Paths.StateDir + ": " + err.Error(), Remedy: "make " + cfg.Paths.StateDir + " writable (nothing was sent to the CA; the token is unused)"}
	}
	host.Hook.At("before sign")
	issued, err := r.Client.Sign(r.Ctx, tok, r.Roots)
	if err != nil {
		return signFailure(r, err, prev, h)
	}
	host.Hook.At("after sign")
	r.Cand = &credstore.Set{Key: issued.Key, Chain: issued.Chain, Roots: r.Roots.Bundle()}
	if f := r.WriteAside(); f != nil {
		f.Summary = "the CA issued a certificate but it could not be saved: " + f.Summary
		f.Remedy = "make " + cfg.Paths.PKIDir + " writable, then run again with a fresh token (this one is used)"
		return f
	}
	r.Out.Enrolled = true
	r.SetResult(state.Enrolled)
	// The CA has burnt the token; leaving it on disk only leaves a secret
	// lying around (cloud-init keeps its own copy in the instance directory).
	// The token goes before the marker: a run killed in between leaves the
	// marker, and the next run (adopting the set left aside) removes it; the
	// other order could leave the used token forever.
	tokPath := host.Path(cfg.CA.TokenFile)
	if err := os.Remove(tokPath); err == nil {
		system.SyncDir(filepath.Dir(tokPath))
		r.Log.Info("step", "step", "enroll", "layer", "enroll", "status", "token-removed", "path", cfg.CA.TokenFile)
	}
	os.Remove(filepath.Join(r.StateDir, state.PendingFile))
	r.Log.Info("step", "step", "enroll", "layer", "enroll", "status", "ok", "serial", issued.Chain[0].SerialNumber.String(), "not_after", issued.Chain[0].NotAfter.UTC())
	return nil
}

// loadToken reads and checks the token before anything is sent: a token
// that cannot work for this node is never presented (and so never burnt).
func loadToken(r *pipeline.Run) (*enroll.Token, []byte, *diag.Finding) {
	cfg := r.Cfg
	raw, err := readToken(r.Ctx, r.Host.Path(cfg.CA.TokenFile))
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
		f.Summary, f.Check = fmt.Sprintf("re-enrollment needed (%s), but the token file %s %s", r.Why, cfg.CA.TokenFile, msg), "enroll"
		return nil, nil, f
	}
	tok, err := enroll.ParseToken(string(raw))
	if err != nil {
		f := diag.FromEnroll(err, diag.Enroll, cfg.CA.TokenFile)
		f.Summary, f.Check = fmt.Sprintf("re-enrollment needed (%s): %s", r.Why, f.Summary), "enroll"
		return nil, nil, f
	}
	if err := tok.Check(cfg.NodeID, cfg.CA.Fingerprint, r.Host.Time()); err != nil {
		f := diag.FromEnroll(err, diag.Enroll, cfg.CA.TokenFile)
		f.Summary, f.Check = fmt.Sprintf("the token in %s cannot be used (it was not sent, so it is not burnt): %s", cfg.CA.TokenFile, f.Summary), "enroll"
		return nil, nil, f
	}
	return tok, raw, nil
}

// signFailure words a failed sign and keeps the marker when the CA saw the
// token, or may have (a timeout after sending): it is burnt whatever
// happened.
func signFailure(r *pipeline.Run, err error, prev state.Pending, h string) *diag.Finding {
	f := diag.FromEnroll(err, diag.Enroll, r.Cfg.CA.TokenFile)
	f.Check = "enroll"
	var ee *enroll.Error
	if errors.As(err, &ee) && ee.Kind == enroll.TokenRejected && prev.TokenSHA256 == h {
		f.Summary = fmt.Sprintf("the CA rejected the enrollment token (401): an earlier run presented this same token at %s and did not finish, so the CA has burnt it", prev.Started.Format(time.RFC3339))
	}
	if !enroll.NotSent(err) {
		state.WritePending(r.StateDir, state.Pending{TokenSHA256: h, Started: r.Host.Time().UTC()}, r.Host.Hook)
	} else {
		os.Remove(filepath.Join(r.StateDir, state.PendingFile))
	}
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
	if prev.TokenSHA256 != "" {
		tokPath := r.Host.Path(r.Cfg.CA.TokenFile)
		if raw, err := readToken(context.Background(), tokPath); err == nil && tokenHash(string(raw)) == prev.TokenSHA256 {
			if os.Remove(tokPath) == nil {
				r.Log.Info("step", "step", "assess", "layer", "enroll", "status", "token-removed", "path", r.Cfg.CA.TokenFile,
					"message", "an earlier run enrolled with this token and was interrupted before removing it")
			}
		}
	}
	os.Remove(filepath.Join(r.StateDir, state.PendingFile))
	system.SyncDir(r.StateDir)
}
