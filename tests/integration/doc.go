// Package integration replays the 2026-03 node API mTLS incident against
// real parts: a real step-ca (in-process, tests/controlplane), real nginx,
// HAProxy and Caddy from their Debian packages plus the Traefik v3
// emulation (tests/ingress), a node API behind each ingress as plain HTTP
// that authenticates callers ONLY from the forwarded client certificate
// through the public clientcert package, and the real provision binary,
// built once, run with --root in a temporary directory.
//
// Why: every failure of the incident (404 from raw-IP routing, TLS EOF,
// unknown certificate authority, 401 invalid node identity with
// mtls_present=false) happened between the node and the API, in the
// ingress. provision is only trustworthy if each misconfiguration, made
// the way an operator makes it in the real program, ends bootstrap with
// that layer's exit code and no receipt, makes verify name the layer and
// the owner the incident's Root Cause names, and, once the control plane
// is fixed, lets the very same bootstrap command succeed with no cleanup on
// the node. The scenario table in replay_test.go maps every line of the
// incident's Symptoms and Recovery sections to a scenario.
//
// The package holds only tests; this file carries the documentation.
package integration
