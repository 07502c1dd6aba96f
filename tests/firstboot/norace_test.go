package firstboot

// raceEnabled is set by race_test.go when the tests run with -race; the
// binary under test is then built with the race detector too.
var raceEnabled bool
