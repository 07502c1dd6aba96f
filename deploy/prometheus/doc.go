// Package prometheus holds provision's Prometheus alerting rules
// (provision.rules.yml) and their promtool unit tests
// (provision.rules.test.yml), and the Go tests that run the real promtool
// on them and check that every runbook link resolves.
//
// The rules are data, not Go: the package exists so that `go test
// ./deploy/prometheus` runs those checks next to the files they guard. What
// the rules page on and why is in docs/metrics.md.
package prometheus
