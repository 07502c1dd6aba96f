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
			logger.LogAttrs(r.Context(), slog.LevelWarn, "invalid node identity", attrs...)
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
