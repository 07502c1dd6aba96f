// Package packaging builds and checks the provision .deb.
//
// The package is built by the pinned nfpm Go tool (go.mod `tool` directive)
// through build-deb.sh, so CI and a developer produce the same artifact with
// no packager installed system-wide. The tests here treat the .deb the way an
// image build does: build it with the shipped script, inspect it with
// dpkg-deb, install it with dpkg into a scratch root (so the machine running
// the test is not changed), run the installed binary, and check the installed
// units with systemd-analyze against that same root.
package packaging
