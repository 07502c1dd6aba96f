// Package clientcertmod checks what an API team gets when it imports
// github.com/gpuaas/provision/clientcert: a module of its own whose graph
// holds nothing but itself, and a README whose program builds.
//
// clientcert is a nested module (clientcert/go.mod), so `go test ./...` at
// the repository root does not run its tests; ./test runs them from the
// clientcert directory. This package runs from the main module because it
// drives the go command against a throwaway module outside the repository.
package clientcertmod
