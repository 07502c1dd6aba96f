// Package property checks provision's diagnosis against a peer that
// misbehaves in generated ways, not in ways the suite chose one by one.
//
// A loopback TLS server under the test's control (a Go TLS server with the
// node API's real certificate from the real step-ca's intermediate, behind
// a relay that understands TLS record boundaries) closes, resets, stalls or
// sends a TLS alert at each stage of the exchange: before ServerHello,
// after the server's certificate, after the CertificateRequest, after the
// client's certificate, after the handshake; it cuts the HTTP answer
// mid-headers and mid-body, answers every status class with JSON, HTML and
// oversized bodies, with and without asking for a client certificate,
// under TLS 1.2 and TLS 1.3. For every case, verify and bootstrap, run
// through provision's command line (cli.Run, in-process) and judged by
// their JSON report:
//
//   - never panic (not even one contained in a check: layer internal);
//   - name exactly one root cause when they fail, and none when they pass;
//   - report ok only for the success rule: a verified server certificate,
//     the node's certificate sent, and 200 with a JSON task or 204;
//   - never name a layer above the stage where the exchange broke.
//
// Why: issue 11 found verify crashing on an ingress behaviour (an alert
// before the server certificate) that no hand-written case had. The
// invariants above are what the tool promises whatever the peer does.
//
// The package holds only tests; this file carries the documentation.
package property
