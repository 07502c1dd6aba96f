// Package systemd holds provision's systemd units (provision.service,
// provision-verify.service and .timer, provision-renew.service and .timer)
// and the tests that check them with the real systemd-analyze.
//
// The units are data, not Go: the package exists so that `go test
// ./deploy/systemd` runs those checks next to the files they guard. Why the
// units look the way they do (ordering that avoids the cloud-final deadlock, a
// start deadline, a start limit, the per-install done marker) is explained in
// comments inside the units and in docs/first-boot.md.
//
// # Sandbox
//
// Both services run with the sandbox below, and CI fails when
// `systemd-analyze security --offline=true` scores either above 2.0 (they
// score 1.6 with systemd 252; TestSecurityExposure). Each directive is kept
// because what provision does still works under it:
//
//   - ProtectSystem=strict with ReadWritePaths= for exactly what is written:
//     /etc (the hosts file is replaced by a rename from a temp file in /etc),
//     /var/lib/provision (StateDirectory=), -/run/provision (the token, deleted
//     after use); verify only -/var/lib/provision/tasks. A config that moves
//     those paths needs a drop-in, which `provision userdata` writes.
//   - CapabilityBoundingSet= (none): every file provision reads or writes is
//     owned by root, and root needs no capability to use its own files. A full
//     bootstrap (enrollment, key, certificate, receipt) and a verify were run
//     against the lab control plane with an empty bounding set and
//     no_new_privs (setpriv --bounding-set=-all --no-new-privs): both exit 0.
//     The one loss: an /etc/hosts owned by another user or group is rewritten
//     root:root (the chown that kept its owner needs CAP_CHOWN).
//   - SystemCallFilter=@system-service minus @privileged and @resources, with
//     SystemCallErrorNumber=EPERM: the system calls of a traced bootstrap,
//     verify, version and getent(1) are all allowed but fchown, which returns
//     EPERM and which provision already treats as "keep going" (see above).
//     EPERM rather than a kill, so a call a future Go runtime makes (it already
//     tolerates EPERM from setrlimit) fails softly instead of killing a
//     first-boot unit with SIGSYS.
//   - RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK: TCP to the
//     CA and the node API; getent(1) resolves through glibc's NSS, which talks
//     to nscd or systemd-resolved over AF_UNIX and asks the kernel for the
//     interface addresses over AF_NETLINK (AI_ADDRCONFIG).
//   - ProtectProc=invisible, ProcSubset=pid: provision reads only its own
//     /proc/self (the Go runtime's cgroup limits) and nothing in /proc/sys.
//   - MemoryDenyWriteExecute, LockPersonality, SystemCallArchitectures=native,
//     RestrictNamespaces, RestrictRealtime, RestrictSUIDSGID, PrivateMounts,
//     PrivateDevices, PrivateTmp, ProtectHome, ProtectClock, ProtectHostname,
//     ProtectKernel*, ProtectControlGroups, NoNewPrivileges: a static Go binary
//     and getent need none of what they forbid.
//
// Off, and why:
//
//   - User=/DynamicUser=: /etc/hosts is root's, and writing it is the job.
//   - PrivateNetwork=: the job is network I/O to the CA and the node API.
//   - IPAddressDeny=: the CA and node API addresses are per-site config, not
//     known when the package is built; a site can add IPAddressAllow= in a
//     drop-in.
//   - PrivateUsers=: inside a user namespace every file not owned by root reads
//     as owned by nobody, and a kernel without user namespaces would fail the
//     unit at start; a first-boot unit must not depend on either.
//   - RootDirectory=: provision works on the host's own /etc and /var/lib.
//   - DeviceAllow= reports char-rtc: that is ProtectClock=yes's own read-only
//     rule.
//
// The node key in the TPM (key.store = "tpm") needs the TPM's resource
// manager, which PrivateDevices=yes hides and which is root:tss 0660, out of
// reach of a root without capabilities. tpm.conf is the drop-in that opens
// exactly it (PrivateDevices=no, DevicePolicy=closed, DeviceAllow=/dev/tpmrm0
// rw, SupplementaryGroups=tss, and ~@raw-io, which PrivateDevices= also
// blocked); it is not applied to the shipped units: `provision userdata`
// writes it for the three services only when the config keeps the key in
// the TPM, and the package ships it under /usr/share/provision/systemd/ for
// nodes set up otherwise. The units score 1.8 with it (TestTPMDropIn).
//
// Under a running systemd: tests/boot installs the .deb in a minimal Debian
// root and boots it with systemd-nspawn (systemd 252 as PID 1), so the
// services run under exactly this sandbox: bootstrap, verify and renew
// succeed in it, journald records provision without capabilities, the
// renew post_hook records CapEff/CapBnd 0, NoNewPrivs 1, Seccomp 2 and a
// read-only /usr from inside it, and systemd-analyze security scores the
// loaded units (drop-ins included) at most 2.0. What it does not exercise:
// the ordering on network-online.target and time-sync.target, which the
// container reaches at once; units_test.go checks that ordering here.
package systemd
