// Package controlplane is the control plane that provision's tests and the
// README demo run against: a real smallstep step-ca started in-process and a
// node API test server, both on 127.0.0.1 with free ports.
//
// Why real parts: the incident provision exists for (404 from raw-IP routing,
// TLS EOF, unknown certificate authority, 401 invalid node identity with
// mtls_present=false) happened in the seams between a real CA, real TLS
// client authentication and a real HTTP router. A fake CA would not burn
// tokens before validating them, refuse tokens minted before its start, or
// serve its root by fingerprint the way step-ca does; so the CA here is
// github.com/smallstep/certificates/ca itself, with an in-memory DB (token
// reuse is refused) and a JWK provisioner whose key this package keeps to
// mint one-time tokens, good ones and precisely bad ones.
//
// The node API answers GET /v1/nodes/{node_id}/tasks/wait as a long poll
// (200 with a task, 204 on timeout) and rejects a caller whose certificate
// subject is not {node_id} with 401 {"error":"invalid node identity",
// "mtls_present":...,"reason":...}, logging every rejection. In front of the
// handler it routes like Traefik does (an unknown Host gets the plain-text
// "404 page not found", a Host that differs from the TLS SNI gets 421, TLS
// client-auth options are chosen by SNI), and it can be switched at run time
// to trust the wrong CA or to drop connections after the ClientHello, the
// incident's failures. How the caller's identity is read is pluggable
// (IdentitySource), and the same handler can serve plain HTTP behind an
// ingress.
//
// In front of the CA, CAFront relays the nodes' connections untouched
// (client certificates included) and, armed, answers their next renewals
// itself: the stray 401 from a proxy that says nothing about the
// certificate. The CA can renew expired certificates
// (AllowRenewalAfterExpiry) and publish its CRL (CRL).
//
// Time: every test passes on any day it runs. A test that fixes a clock
// builds every certificate, token, record and file time it judges from that
// same clock (NewPKIAt, LeafRequest's NotBefore/NotAfter from the fixed
// instant), or takes its "now" from the material it built. Material made at
// the real time (NewPKI, the step-ca here) is judged at the real time, and
// only against durations relative to when it was made, never a calendar
// date. The step-ca issues at the real time, so nothing it signs may be
// judged at a fixed instant.
//
// All parts stop on Close; nothing touches files outside the directories the
// caller hands in, and nothing talks to anything but loopback.
package controlplane
