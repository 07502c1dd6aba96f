//go:build !race

package testenv

// RaceEnabled reports whether the tests were built with -race.
const RaceEnabled = false
