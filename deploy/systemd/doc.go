// Package systemd holds provision's systemd units (provision.service,
// provision-verify.service, provision-verify.timer) and the tests that check
// them with the real systemd-analyze.
//
// The units are data, not Go: the package exists so that `go test
// ./deploy/systemd` runs those checks next to the files they guard. Why the
// units look the way they do (ordering that avoids the cloud-final deadlock, a
// start deadline, a start limit, the per-install done marker) is explained in
// comments inside the units and in docs/first-boot.md.
package systemd
