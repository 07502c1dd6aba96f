#!/bin/sh
# Build the provision .deb: a static binary plus units, cloud-init template,
# example config and docs, packaged by the pinned nfpm Go tool (go.mod).
#
# Environment:
#   VERSION   package and binary version (default: derived from git describe)
#   OUT_DIR   where the .deb goes (default: dist)
#   GOARCH    target architecture (default: go env GOARCH)
# Prints the path of the built .deb on stdout as its last line.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ -z "${VERSION:-}" ]; then
	# Debian versions must start with a digit: v1.2.0-3-gabc1234 -> 1.2.0+3.gabc1234;
	# without a release tag -> 0.0.0+git.<hash>[.dirty].
	if desc=$(git describe --tags --dirty --match 'v[0-9]*' 2>/dev/null); then
		VERSION=$(printf '%s' "${desc#v}" | sed 's/-/+/; s/-/./g')
	else
		VERSION="0.0.0+git.$(git describe --always --dirty | tr - .)"
	fi
fi
OUT_DIR=${OUT_DIR:-dist}
GOARCH=${GOARCH:-$(go env GOARCH)}
export VERSION GOARCH

mkdir -p "$OUT_DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

PROVISION_BIN="$work/provision"
export PROVISION_BIN
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X github.com/gpuaas/provision/internal/cli.version=$VERSION" \
	-o "$PROVISION_BIN" ./cmd/provision

deb="$OUT_DIR/provision_${VERSION}_${GOARCH}.deb"
go tool nfpm pkg --packager deb --config packaging/nfpm.yaml --target "$deb" >&2
echo "$deb"
