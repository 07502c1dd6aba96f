#!/usr/bin/env bash
# Runs every go fuzz target in the module for a short time each (default 5s),
# starting from the committed seed corpora under each package's
# testdata/fuzz/. Usage: tests/fuzz.sh [duration]
# Every module: the main one and the nested clientcert and nodekey modules, which
# `go list ./...` at the root does not enter.
set -euo pipefail
cd "$(dirname "$0")/.."
t="${1:-5s}"
count=0
top=$(pwd)
for mod in . clientcert nodekey; do
	cd "$top/$mod"
	for pkg in $(go list ./...); do
		targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true)
		for target in $targets; do
			echo "fuzz: $pkg $target for $t"
			go test -run "^$" -fuzz "^${target}\$" -fuzztime "$t" -fuzzminimizetime 2s "$pkg" >/tmp/fuzz-$$.log 2>&1 || {
				cat /tmp/fuzz-$$.log; rm -f /tmp/fuzz-$$.log
				echo "fuzz: $target in $pkg FAILED (the failing input is under $pkg's testdata/fuzz/$target)"
				exit 1
			}
			count=$((count + 1))
		done
	done
done
rm -f /tmp/fuzz-$$.log
echo "fuzz: $count targets ran for $t each, 0 failures"
