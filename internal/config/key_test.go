package config

import (
	"strings"
	"testing"
)

// TestKeySection: [key] takes "file" (the default) or "tpm", and a TPM
// named by a device path or a software TPM's socket; anything else is one
// problem naming the key and its line.
func TestKeySection(t *testing.T) {
	c, err := Parse("p.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.Key.Store != KeyStoreFile || c.Key.TPM != "/dev/tpmrm0" || c.Key.OwnerAuthFile != "" {
		t.Errorf("defaults: %+v", c.Key)
	}
	for _, ok := range []string{
		"[key]\nstore = \"tpm\"\n",
		"[key]\nstore = \"tpm\"\ntpm = \"/dev/tpmrm1\"\nowner_auth_file = \"/etc/provision/tpm-owner\"\n",
		"[key]\nstore = \"tpm\"\ntpm = \"swtpm:path=/run/swtpm/tpm.sock\"\n",
		"[key]\ntpm = \"swtpm:host=127.0.0.1,port=2321\"\n",
	} {
		if _, err := Parse("p.toml", []byte(minimal+ok)); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	lines := strings.Count(minimal, "\n")
	for _, bad := range []struct{ src, key, msg string }{
		{"[key]\nstore = \"hsm\"\n", "key.store", `must be "file"`},
		{"[key]\nstore = \"\"\n", "key.store", `leave the key out for the default "file"`},
		{"[key]\ntpm = \"tpmrm0\"\n", "key.tpm", "neither an absolute, clean device path"},
		{"[key]\ntpm = \"swtpm:path=sock\"\n", "key.tpm", "absolute and clean"},
		{"[key]\ntpm = \"swtpm:port=99999\"\n", "key.tpm", "not 1-65535"},
		{"[key]\nowner_auth_file = \"owner\"\n", "key.owner_auth_file", "absolute path"},
		{"[key]\nstor = \"tpm\"\n", "key.stor", `did you mean "key.store"`},
	} {
		wantOnly(t, parseProblems(t, minimal+bad.src), bad.key, lines+2, bad.msg)
	}
}
