#!/usr/bin/env bash
# Runs every Go fuzz target of the parsers that take untrusted input, for
# N seconds each (default 10), starting from the committed seed corpora under
# each package's testdata/fuzz/: the hosts block transform (internal/hosts
# FuzzApply), the config loader (internal/config FuzzParse) and every
# forwarded client-certificate parser (clientcert Fuzz*). A crash leaves the
# failing input under that package's testdata/fuzz/<target>/ and fails.
# Usage: tests/reliability/fuzz.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-10}"
pkgs=(./internal/hosts ./internal/config ./clientcert)
count=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pkg in "${pkgs[@]}"; do
	targets=$(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
	if [ -z "$targets" ]; then
		echo "fuzz: no fuzz targets in $pkg" >&2
		exit 1
	fi
	for target in $targets; do
		echo "fuzz: $pkg $target for ${secs}s"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "${secs}s" "$pkg" >"$log" 2>&1; then
			cat "$log"
			echo "fuzz: $target in $pkg FAILED (the failing input is under $pkg/testdata/fuzz/$target)"
			exit 1
		fi
		count=$((count + 1))
	done
done
echo "fuzz: $count targets ran for ${secs}s each, 0 failures"
