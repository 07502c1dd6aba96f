#!/bin/sh
# Print the Debian package version of a commit of this repository (HEAD by
# default, with ".dirty" when the work tree has changes), for build-deb.sh.
#
#   v1.2.0 tagged                  1.2.0
#   3 commits after v1.2.0         1.2.0+3.gabc1234
#   no release tag                 0.0.0+git20261206144410.412.abc1234
#
# An untagged build is named by its commit time (UTC, to the second), then
# the number of commits in its history, then the hash: a later commit sorts
# higher under dpkg --compare-versions, so apt takes a newer build for an
# upgrade, never a downgrade. (0.0.0+git.<hash> sorted by the hash alone:
# a5c35ca above d6a527c, whichever came first.) packaging's
# TestVersionsSort checks two consecutive commits with dpkg.
#
# Usage: sh packaging/version.sh [commit]   (run inside the repository)
set -eu

rev=${1:-HEAD}
dirty=""
if [ "$rev" = HEAD ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
	dirty=".dirty"
fi
# Debian versions must start with a digit: v1.2.0-3-gabc1234 -> 1.2.0+3.gabc1234.
if desc=$(git describe --tags --match 'v[0-9]*' "$rev" 2>/dev/null); then
	printf '%s%s\n' "$(printf '%s' "${desc#v}" | sed 's/-/+/; s/-/./g')" "$dirty"
	exit 0
fi
when=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S "$rev")
count=$(git rev-list --count "$rev")
hash=$(git rev-parse --short=7 "$rev")
printf '0.0.0+git%s.%s.%s%s\n' "$when" "$count" "$hash" "$dirty"
