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
// The three services run with the sandbox below, and CI fails when
// `systemd-analyze security --offline=true` scores any above 2.0 (they
// score 1.8 with systemd 252, 1.9 with the TPM drop-in; TestSecurityExposure,
// TestTPMDropIn, TestKeyGroupDropIn). Each directive is kept
// because what provision does still works under it:
//
//   - ProtectSystem=strict with ReadWritePaths= for exactly what is written:
//     /etc (the hosts file is replaced by a rename from a temp file in /etc),
//     -/var/lib/provision, -/run/provision (the token, deleted after use);
//     verify only -/var/lib/provision/tasks. A config that moves those paths
//     needs a drop-in, which `provision userdata` writes.
//   - /var/lib/provision is created 0700, when missing, by
//     ExecStartPre=+/bin/mkdir (unsandboxed: /var/lib is read-only inside),
//     not by StateDirectory=: systemd sets a StateDirectory='s mode back to
//     the unit's at every start and, when its group is not the service's,
//     chowns the whole tree back to root:root, which would take the key away
//     from paths.key_group's node-agent on the next start.
//   - CapabilityBoundingSet= (none): every file provision reads or writes is
//     owned by root, and root needs no capability to use its own files. A full
//     bootstrap (enrollment, key, certificate, receipt) and a verify were run
//     against the lab control plane with an empty bounding set and
//     no_new_privs (setpriv --bounding-set=-all --no-new-privs): both exit 0.
//     One loss: an /etc/hosts owned by another user or group is rewritten
//     root:root (the chown that kept its owner needs CAP_CHOWN).
//   - paths.key_group (the key, its directories and the tasks handed off go
//     to a node-agent's group): root without CAP_CHOWN may give a file it
//     owns to a group it is a member of, and to no other (chown(2)). So the
//     units take no capability for it; the key-group drop-in
//     (key-group.conf, written by provision userdata for every unit when the
//     config names a key group) makes the service a member of exactly that
//     group (SupplementaryGroups=), which systemd-analyze does not score for a
//     root service, and fchown is the one ownership call allowed (below). On
//     main before issue 30 a bootstrap with key_group burnt its token before
//     the refused chown, and every renew --force threw away a certificate;
//     now each run proves it can give a new file to the group before
//     anything irreversible and names the drop-in when it cannot (tests/e2e
//     TestKeyGroupChownRefused, under setpriv --bounding-set=-chown, with and
//     without --groups). CAP_CHOWN would have served too, but it lets root
//     give any file to anyone, and it alone cost the units 0.2 (2.1 with the
//     TPM drop-in: over the ceiling).
//   - SystemCallFilter=@system-service minus @privileged and @resources, then
//     fchown alone allowed again (chown, lchown, fchownat stay filtered:
//     provision changes ownership only through a descriptor it opened; 0.2 of
//     the score), with SystemCallErrorNumber=EPERM: the system calls of a
//     traced bootstrap, verify, version and getent(1) are all allowed (an
//     fchown that keeps /etc/hosts' owner gets EPERM without CAP_CHOWN, which
//     provision treats as "keep going"). EPERM rather than a
//     kill, so a call a future Go runtime makes (it already tolerates EPERM
//     from setrlimit) fails softly instead of killing a first-boot unit with
//     SIGSYS.
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
// manager, which PrivateDevices=yes hides and which is tss:tss 0660 (Debian's
// tpm-udev rules; that package creates the tss group, and the .deb recommends
// it), out of reach of a root without capabilities. tpm.conf is the drop-in that opens
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
// succeed in it, with paths.key_group too (a node-agent running as its own
// user reads the key and polls with it), the renew post_hook records
// CapEff/CapBnd 0, NoNewPrivs 1, Seccomp 2 and a read-only /usr from
// inside it, and systemd-analyze security scores the loaded units (drop-ins
// included) at most 2.0. What it does not exercise:
// the ordering on network-online.target and time-sync.target, which the
// container reaches at once; units_test.go checks that ordering here.
package systemd
