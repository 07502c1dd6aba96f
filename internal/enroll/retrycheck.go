package enroll

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
)

// Which of the CA client's requests may be tried again, and after which
// answers, is the client's to know: retry runs the loop and waits, and
// decides nothing. These are the checks go-retryablehttp asks between its
// attempts.

// IsTLSAlert reports whether err is a TLS alert sent by the peer, such as
// "remote error: tls: unknown certificate authority". Retrying cannot fix
// those; go-retryablehttp's default policy retries them anyway.
func IsTLSAlert(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "remote error"
}

// checkGET is the retry decision for idempotent GETs to the CA: transport
// failures, 429 and 5xx (except 501) are retried; TLS alerts, certificate
// verification failures and every other status stop at once.
func checkGET(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		var cve *tls.CertificateVerificationError
		if IsTLSAlert(err) || errors.As(err, &cve) {
			return false, err
		}
		return true, nil
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return true, nil
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		return true, nil
	}
	return false, nil
}

// checkSign is the retry decision for POST /sign. step-ca burns the one-time
// token before it validates the request, so only a failure that happened
// before the request could reach the CA (dialing) is retried; any response,
// 5xx included, is final.
func checkSign(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err == nil {
		return false, nil
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true, nil
	}
	return false, err
}
