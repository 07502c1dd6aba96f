package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/gpuaas/provision/nodekey/swtpm"
)

// The node key in the TPM (-tpm): each round also runs a cold bootstrap,
// a warm one and verify on a node whose config says key.store = "tpm",
// against a software TPM (swtpm in socket mode) started for the bench:
// the same line as cold/warm/verify, with the key made and every
// signature (the CSR, the proof's handshake, verify's key-store check)
// done in the TPM.

// benchTPM is -tpm: the software TPM, nil without the flag.
var benchTPM *swtpm.TPM

var tpmRuns = []provisionRun{
	{"cold (tpm)", "bootstrap", "provision bootstrap (cold, key in the TPM)"},
	{"warm (tpm)", "bootstrap", "provision bootstrap (warm, key in the TPM)"},
	{"verify (tpm)", "verify", "provision verify (key in the TPM)"},
}

// startTPM starts the bench's software TPM.
func startTPM() (func(), error) {
	t, err := swtpm.Launch()
	if err != nil {
		return nil, fmt.Errorf("-tpm needs swtpm and swtpm-tools: %w", err)
	}
	benchTPM = t
	return t.Close, nil
}

// tpmRound runs the TPM contenders on a fresh node of their own.
func (b *bench) tpmRound(i int) error {
	id := fmt.Sprintf("tpm-%04d", i)
	root := filepath.Join(b.work, "nodes", id)
	files, err := node(b.fl, root, id)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(files.ConfigPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "\n[key]\nstore = \"tpm\"\ntpm = %q\n", benchTPM.Spec())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return b.provision(tpmRuns, b.prov, []string{"--config", files.ConfigArg, "--root", root, "--format", "json"})
}
