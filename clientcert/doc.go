// Package clientcert turns the client certificate that an ingress forwards to
// an HTTP backend into a verified node identity, and says precisely why when
// it cannot.
//
// # Why it exists
//
// In the 2026-03 node API incident, nodes were rejected with
// "401 invalid node identity" long after TLS had been fixed. Two of the five
// defects sat exactly at the ingress-to-API handoff: Traefik did not forward
// the client certificate on the node API route, and once it did, the API
// understood only one forwarded-certificate format while Traefik emitted
// another. The API's rejection log did not say whether any certificate had
// arrived, so nobody could tell "the ingress sent nothing" from "the API could
// not read what it got" from "the certificate is from the wrong CA".
//
// This package closes that gap for any API that sits behind an ingress:
//
//   - It reads every common forwarded-certificate format exactly as the
//     ingress emits it (see [KnownFormats]): Traefik (both the v2.9.2+/v3
//     base64-DER form and the older URL-escaped form), nginx
//     $ssl_client_escaped_cert, Envoy/Istio x-forwarded-client-cert, HAProxy
//     and Caddy base64 DER, AWS ALB X-Amzn-Mtls-Clientcert and RFC 9440
//     Client-Cert/Client-Cert-Chain. The caller may name the format or let it
//     be detected; two different formats at once is an error (ReasonAmbiguous),
//     never a guess.
//   - It honours forwarded headers only from configured trusted proxy
//     addresses: anybody can send a header, and certificates are public, so a
//     header from an untrusted peer is ignored and reported (ReasonUntrustedProxy).
//   - It verifies the leaf against the caller's CA pool (using the forwarded
//     intermediates), at the current time of an injectable clock, with the
//     clientAuth extended key usage required explicitly, and derives the node
//     identity from the verified leaf only (subject CN and/or SANs).
//   - Every outcome is a [Result] with stable log and JSON keys (mtls_present,
//     format, subject, issuer, serial, not_after, verified, reason, identity)
//     and a reason from a fixed set ([Reason]), so a single rejection log line
//     answers the question the incident could not: did an identity reach the
//     API, and if so, why was it refused.
//
// # Use
//
// Build a [Verifier] from a [Config], then either call [Verifier.Verify] (or
// [Verifier.VerifyExpected]) yourself, or wrap handlers with
// [Verifier.Middleware], which stores the Result in the request context
// ([ResultFromContext], [IdentityFromContext]), answers rejected requests with
// 401 and the JSON body
//
//	{"error":"invalid node identity","mtls_present":false,"reason":"missing"}
//
// and logs each rejection with log/slog. [Parse] is the header-only half
// (no trust or verification decisions apart from size and syntax) for tests
// and tools that want to see what an ingress sent.
package clientcert
