package clientcert

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
)

// MiddlewareOptions configure [Verifier.Middleware].
type MiddlewareOptions struct {
	// Expected returns the identity the request must carry, e.g.
	// func(r *http.Request) string { return r.PathValue("node_id") } when
	// the middleware wraps a handler registered on an http.ServeMux pattern
	// with {node_id}. Nil or "": any verified identity is accepted.
	Expected func(*http.Request) string
	// Logger receives one Warn record per rejection ("invalid node identity"
	// with the stable keys) and a Debug record per accepted request.
	// Default slog.Default().
	Logger *slog.Logger
	// OnReject, when set, is called once per rejected request, before the
	// 401 is written, with what a metrics or audit hook needs: count
	// rejections by Reason and MTLSPresent (both bounded), and find the
	// caller by PeerAddr and UserAgent (never metric labels: unbounded).
	// It runs on the request's goroutine and must not block. clientcert
	// imports no metrics library; see the package's Prometheus example.
	OnReject func(Rejection)
}

// Rejection is one request the middleware refused. It carries the caller's
// identity fields even when the caller sent no certificate at all: the
// incident's "anonymous internal caller still polling" is found by
// PeerAddr and UserAgent, not by a certificate it never presented.
type Rejection struct {
	Reason      Reason // why; one of the Reason constants
	MTLSPresent bool   // a client certificate reached the API (forwarded or direct)
	// FromTrustedProxy: the TCP peer is in Config.TrustedProxies (the
	// ingress). False with MTLSPresent false is a caller that reached the
	// API around the ingress, with no identity at all.
	FromTrustedProxy bool
	PeerAddr         string // the TCP peer, r.RemoteAddr ("ip:port")
	UserAgent        string // the User-Agent header, clipped to 256 bytes
	Method, Path     string
	Result           Result // the whole verification result
}

type ctxKey struct{}

// NewContext returns ctx carrying res.
func NewContext(ctx context.Context, res Result) context.Context {
	return context.WithValue(ctx, ctxKey{}, res)
}

// ResultFromContext returns the Result stored by [Verifier.Middleware].
func ResultFromContext(ctx context.Context) (Result, bool) {
	r, ok := ctx.Value(ctxKey{}).(Result)
	return r, ok
}

// IdentityFromContext returns the verified node identity stored by
// [Verifier.Middleware]; ok is false if there is none.
func IdentityFromContext(ctx context.Context) (string, bool) {
	r, ok := ResultFromContext(ctx)
	if !ok || !r.OK() {
		return "", false
	}
	return r.Identity, true
}

// RejectionBody is the JSON body of a 401 answer.
type RejectionBody struct {
	Error       string `json:"error"` // always "invalid node identity"
	MTLSPresent bool   `json:"mtls_present"`
	Reason      Reason `json:"reason"`
}

// Middleware verifies every request before next sees it. Accepted requests
// reach next with the Result in their context. Rejected ones get 401 with
// {"error":"invalid node identity","mtls_present":<bool>,"reason":"<reason>"}
// and are logged with the stable keys, plus method and path.
func (v *Verifier) Middleware(next http.Handler, opts MiddlewareOptions) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		logger := opts.Logger
		if logger == nil {
			logger = slog.Default()
		}
		expected := ""
		if opts.Expected != nil {
			expected = opts.Expected(r)
		}
		res := v.VerifyExpected(r, expected)
		attrs := append(res.LogAttrs(), slog.String("method", r.Method), slog.String("path", r.URL.Path))
		if !res.OK() {
			rej := Rejection{Reason: res.Reason, MTLSPresent: res.MTLSPresent, FromTrustedProxy: v.trusted(r.RemoteAddr),
				PeerAddr: r.RemoteAddr, UserAgent: clipUA(r.UserAgent()), Method: r.Method, Path: r.URL.Path, Result: res}
			attrs = append(attrs, slog.String("user_agent", rej.UserAgent), slog.Bool("from_trusted_proxy", rej.FromTrustedProxy))
			logger.LogAttrs(r.Context(), slog.LevelWarn, "invalid node identity", attrs...)
			if opts.OnReject != nil {
				opts.OnReject(rej)
			}
			WriteRejection(w, res)
			return
		}
		logger.LogAttrs(r.Context(), slog.LevelDebug, "node identity verified", attrs...)
		next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), res)))
	})
}

// WriteRejection writes the 401 answer for res.
func WriteRejection(w http.ResponseWriter, res Result) {
	body, _ := json.Marshal(RejectionBody{Error: "invalid node identity", MTLSPresent: res.MTLSPresent, Reason: res.Reason})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write(append(body, '\n'))
}

// clipUA bounds a caller-controlled header that ends up in logs.
func clipUA(s string) string {
	const max = 256
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
