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
// What the tests prove (docs/first-boot.md, "The boot suite"). The units
// run as shipped: the only drop-ins the tests write shorten the timers'
// periods (fastTimers); an image is made by dpkg -i in its root, which
// enables nothing but what the package's postinst enables.
//
//   - TestBootFirstBoot: a node whose node-agent (tests/boot/agent) runs as
//     its own user and reads its key through paths.key_group. cloud-init
//     runs the seed and reports done; provision.service runs once, under
//     its sandbox (no capabilities, a member of the key group through the
//     drop-in userdata wrote, systemd-analyze security of the loaded
//     units), and succeeds; the receipt, the done marker and the hosts
//     block exist, the token is gone; the journal holds exactly one JSON
//     report line for the run; both timers are enabled and waiting with
//     nothing but the package and the user-data (systemctl, and provision
//     status offline); state_dir, pki_dir, the generation and the key are
//     the group's (0710, 0750, 0750, 0640) and the agent reads the key.
//     The node API then fails every request (503) before the renewal is
//     due: the renew timer renews across the outage (published without a
//     proof, both sets failing alike past the ingress), and the post_hook
//     runs in that run all the same, inside the renew sandbox (it records
//     the sandbox in the journal), and reloads the agent. Once the API is
//     back the next renew proves it, and the agent polls with the new certificate and reads a
//     task provision-verify.service handed off (0640, the group's); verify
//     passes; the textfile metrics appear (promtool accepts them). Then a
//     reboot: the hosts block survives cloud-init's second boot, bootstrap
//     is not run again (the done marker), the timers are still scheduled,
//     verify stays healthy.
//   - TestBootBrokenIngress: nginx trusts the wrong client CA. The boot
//     does not claim success (cloud-init status: error, no done marker),
//     the journal's report names tls-client-auth and the ingress, and once
//     nginx is fixed and reloaded the unit's own restart (RestartSec=30s as
//     shipped, then its restart splay) bootstraps the node.
//   - TestBootMovedPaths: state_dir, pki_dir and the metrics directory
//     moved; the drop-ins userdata wrote let the node bootstrap, verify and
//     renew under the sandbox, and the done marker condition follows the
//     moved state_dir across a reboot.
//   - TestBootPackage: the .deb installed, upgraded (N then N+1), removed
//     and purged with dpkg inside the booted node, so its maintainer
//     scripts run under systemd: the install enables and starts both
//     timers and provision.service bootstraps under the units just
//     installed; an operator's disable survives the upgrade, which does
//     not run bootstrap again; remove stops everything and keeps the
//     node's state; purge leaves none of provision's files or enablement.
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
// developer machine and fails under CI=true (.ci/run installs them). The
// packages are built by packaging/build-deb.sh, the stand-in node-agent by
// go build, once per test binary.
//
// The package holds only tests; this file carries the documentation.
package boot
