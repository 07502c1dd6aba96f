// Package packaging builds and checks the provision .deb.
//
// The package is built by the pinned nfpm Go tool (go.mod `tool` directive)
// through build-deb.sh, so CI and a developer produce the same artifact with
// no packager installed system-wide. build-deb.sh also generates what must
// not drift from the source: the man pages and shell completions (from the
// CLI's command table and help text and the config's key table,
// internal/cli/gendocs), the licence texts of the modules linked into the
// binary (packaging/licenses, from the binary's own build info) and the
// Debian changelog entry for the build. The JSON Schemas of every JSON
// document provision prints or writes (schemas/, schema_version 1) ship as
// they are, under /usr/share/provision/schemas/; tests/e2e validates real
// documents against them, and the test here the installed binary's.
//
// The tests here treat the .deb the way an image build and an operator do:
// build it with the shipped script, run lintian on it (no errors, no
// warnings; overrides only with their reason), inspect it with dpkg-deb,
// install it with dpkg into a scratch root, run the installed binary, compare
// the installed man pages with its --help, check the installed units with
// systemd-analyze against that same root, then upgrade, remove and purge it
// and check what each kept. The scratch root keeps the machine running the
// test unchanged: dpkg runs the maintainer scripts without chroot and with
// DPKG_ROOT set to the scratch root, which the scripts prefix to every path
// (and which keeps them from calling the machine's systemctl).
package packaging
