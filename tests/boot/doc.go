// Package boot boots GPU nodes for real: a minimal Debian root with
// systemd as PID 1 and cloud-init, the project's own .deb installed in it,
// a NoCloud seed rendered by `provision userdata`, in a systemd-nspawn
// container, against the lab control plane (the real step-ca in-process,
// real nginx terminating mTLS in front of the node API) on loopback.
//
// Why: everything else checks the units and the cloud-config statically
// (systemd-analyze verify and security, cloud-init schema) or runs the
// binary by hand with --root. The incident was "bootstrap appeared to
// succeed while the node could not poll"; a unit whose sandbox blocks one
// write, a cloud-config that never starts the unit, a timer that never
// fires or a condition that names a path the config moved is the same
// failure one layer down, and only a booted systemd shows it. So each test
// here boots a node the way a rack does and judges it from outside, from
// evidence: the container's journal files (journalctl -D), files under the
// root, and commands run inside it through nsenter (cloud-init status,
// systemctl show, systemd-analyze security).
//
// What the tests prove (docs/first-boot.md, "The boot suite"):
//
//   - TestBootFirstBoot: cloud-init runs the seed and reports done;
//     provision.service runs once, under its sandbox (no capabilities,
//     systemd-analyze security of the loaded units), and succeeds; the
//     receipt, the done marker and the hosts block exist, the token is
//     gone; the journal holds exactly one JSON report line for the run;
//     the verify and renew timers fire (shortened by drop-ins the test
//     writes) and their services succeed, a minute-long certificate is
//     really renewed and its post_hook runs inside the renew sandbox; the
//     textfile metrics appear (promtool accepts them). Then a reboot: the
//     hosts block survives cloud-init's second boot, bootstrap is not run
//     again (the done marker), verify stays healthy.
//   - TestBootBrokenIngress: nginx trusts the wrong client CA. The boot
//     does not claim success (cloud-init status: error, no done marker),
//     the journal's report names tls-client-auth and the ingress, and once
//     nginx is fixed and reloaded the unit's own restart bootstraps the
//     node.
//   - TestBootMovedPaths: state_dir, pki_dir and the metrics directory
//     moved; the drop-ins userdata wrote let the node bootstrap, verify and
//     renew under the sandbox, and the done marker condition follows the
//     moved state_dir across a reboot.
//
// The root is built once per `go test` run with mmdebstrap (minbase,
// systemd, cloud-init) and kept in a cache keyed by its package list
// ($XDG_CACHE_HOME/provision-tests, else /var/cache/provision-tests), so
// a second run on a developer machine starts in seconds; CI starts clean.
// Each node gets its own copy. The container shares the machine's network
// namespace (the lab listens on 127.0.0.1); cloud-init's network
// configuration is turned off in the test image so it cannot touch the
// machine's interfaces. Nodes boot one after the other: two containers
// share that namespace and this machine's cgroup. Every container is
// stopped by its own PID (SIGRTMIN+4 to its PID 1, then its nspawn), also
// when a test fails.
//
// It needs root, systemd-nspawn (systemd-container), mmdebstrap, nsenter,
// journalctl, dpkg, nginx and promtool: missing, a test skips loudly on a
// developer machine and fails under CI=true (.ci/run installs them).
//
// The package holds only tests; this file carries the documentation.
package boot
