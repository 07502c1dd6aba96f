module github.com/gpuaas/provision/nodekey

go 1.25.0

require (
	github.com/foxboron/go-tpm-keyfiles v0.0.0-20260902202739-8c9c2d1005f4
	github.com/google/go-tpm v0.9.9-0.20260124013517-8f8f42cba0de
	golang.org/x/crypto v0.49.0
)

require golang.org/x/sys v0.42.0 // indirect
