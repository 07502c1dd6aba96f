#!/bin/sh
# Build the provision .deb: a static binary plus units, man pages and shell
# completions generated from the CLI's help text, the licence texts of the
# modules linked into the binary, cloud-init template,
# example config, docs, copyright, changelog and maintainer scripts, packaged
# by the pinned nfpm Go tool (go.mod).
#
# Environment:
#   VERSION            package and binary version (default: packaging/version.sh, from git)
#   COMMIT             commit recorded in the binary and the changelog (default: git HEAD, "-dirty" when the tree is)
#   SOURCE_DATE_EPOCH  date of the changelog entry and the man pages (default: the commit's date)
#   OUT_DIR            where the .deb goes (default: dist)
#   GOARCH             target architecture (default: go env GOARCH)
# Prints the path of the built .deb on stdout as its last line.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ -z "${VERSION:-}" ]; then
	# v1.2.0-3-gabc1234 -> 1.2.0+3.gabc1234; without a release tag
	# 0.0.0+git<UTC commit time>.<commits>.<hash>[.dirty], which sorts by
	# commit (packaging/version.sh).
	VERSION=$(sh packaging/version.sh)
fi
if [ -z "${COMMIT:-}" ]; then
	COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
	if [ "$COMMIT" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
		COMMIT="$COMMIT-dirty"
	fi
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
OUT_DIR=${OUT_DIR:-dist}
GOARCH=${GOARCH:-$(go env GOARCH)}
export VERSION GOARCH SOURCE_DATE_EPOCH

mkdir -p "$OUT_DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

PROVISION_BIN="$work/provision"
GEN="$work/gen"
export PROVISION_BIN GEN
# The build tags are cmd/provision/build-tags (the one list the tests and the
# bench read too): they drop step-ca's server-only code, such as its databases.
tags=$(sed -e 's/#.*//' cmd/provision/build-tags | tr -s ' \t\n' '\n' | sed '/^$/d' | paste -sd, -)
CGO_ENABLED=0 go build -trimpath -tags "$tags" \
	-ldflags "-s -w -X github.com/gpuaas/provision/internal/cli.version=$VERSION -X github.com/gpuaas/provision/internal/cli.commit=$COMMIT" \
	-o "$PROVISION_BIN" ./cmd/provision

# Man pages (provision(8), provision-<command>(8), provision.toml(5)) and
# completions from the command table, help text and config key table of this
# same source (go run builds for the machine running the build, whatever
# GOARCH the package is for).
GOARCH= go run ./internal/cli/gendocs -out "$GEN" -version "$VERSION" \
	-date "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)"
gzip -9n "$GEN"/man8/*.8 "$GEN"/man5/*.5

# The licence texts of every module the binary links (as it records them),
# and of the Go distribution; a linked module without one stops the build.
GOARCH= go run ./packaging/licenses -bin "$PROVISION_BIN" -out "$GEN/licenses"

# A native package's changelog (Debian format, as lintian wants it): one
# entry for this build, naming the commit whose history it is.
mkdir -p "$GEN/doc"
cat >"$GEN/doc/changelog" <<CHANGELOG
provision ($VERSION) unstable; urgency=medium

  * Build of commit $COMMIT.
    The changes are that commit's git history; the documentation of this
    version is in /usr/share/doc/provision/.

 -- GPUaaS platform team <platform@gpuaas.invalid>  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")
CHANGELOG
gzip -9n "$GEN/doc/changelog"

deb="$OUT_DIR/provision_${VERSION}_${GOARCH}.deb"
go tool nfpm pkg --packager deb --config packaging/nfpm.yaml --target "$deb" >&2
echo "$deb"
