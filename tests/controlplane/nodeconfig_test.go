package controlplane

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/smallstep/certificates/ca"
)

func TestPrepareNodeWritesAUsableConfigAndToken(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	const node = "gpu-0600"
	root := t.TempDir()
	files, err := cp.PrepareNode(root, node)
	if err != nil {
		t.Fatal(err)
	}

	var cfg NodeConfig
	md, err := toml.DecodeFile(files.ConfigPath, &cfg)
	if err != nil || len(md.Undecoded()) != 0 {
		t.Fatalf("strict decode: %v, undecoded %v", err, md.Undecoded())
	}
	checks := []struct {
		name      string
		got, want string
	}{
		{"node_id", cfg.NodeID, node},
		{"ca.url", cfg.CA.URL, "https://ca.cp.internal:" + strconv.Itoa(cp.CA.Port())},
		{"ca.fingerprint", cfg.CA.Fingerprint, cp.CA.Fingerprint()},
		{"ca.token_file", cfg.CA.TokenFile, DefaultTokenFile},
		{"node_api.url", cfg.NodeAPI.URL, "https://node-api.cp.internal:" + strconv.Itoa(cp.API.Port())},
		{"node_api.wait_path", cfg.NodeAPI.WaitPath, "/v1/nodes/{node_id}/tasks/wait"},
		{"node_api.wait_timeout", cfg.NodeAPI.WaitTimeout, "1s"},
		{"paths.hosts_file", cfg.Paths.HostsFile, "/etc/hosts"},
		{"paths.pki_dir", cfg.Paths.PKIDir, "/var/lib/provision/pki"},
		{"paths.state_dir", cfg.Paths.StateDir, "/var/lib/provision"},
		{"hosts", hostsString(cfg.Hosts), "node-api.cp.internal=127.0.0.1,ca.cp.internal=127.0.0.1"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if !strings.HasPrefix(files.ConfigPath, root) || !strings.HasPrefix(files.TokenPath, root) {
		t.Errorf("files outside the root: %+v", files)
	}
	if _, err := os.Stat(files.HostsPath); err != nil {
		t.Errorf("hosts file: %v", err)
	}

	st, err := os.Stat(files.TokenPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", st.Mode().Perm())
	}
	tok, err := os.ReadFile(files.TokenPath)
	if err != nil {
		t.Fatal(err)
	}
	req, _, err := ca.CreateSignRequest(strings.TrimSpace(string(tok)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := caClient(t, cp.CA, cfg.CA.Fingerprint).Sign(req); err != nil {
		t.Fatalf("the written token does not enroll: %v", err)
	}
}

func TestWriteNodeCredentialsPlantsStaleCert(t *testing.T) {
	t.Parallel()
	cp := Start(t, Options{})
	root := t.TempDir()
	leaf, err := cp.IssueStaleCert("gpu-0700")
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteNodeCredentials(root, DefaultPKIDir, leaf, cp.Unrelated.RootPEM()); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"key.pem": 0o600, "cert.pem": 0o644, "ca.pem": 0o644} {
		st, err := os.Stat(InRoot(root, DefaultPKIDir+"/"+name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}
	if Fingerprint(cp.Unrelated.Root) == cp.CA.Fingerprint() {
		t.Fatal("unrelated CA has the step root's fingerprint")
	}
}

func hostsString(hs []HostEntry) string {
	var parts []string
	for _, h := range hs {
		parts = append(parts, h.Name+"="+h.IP)
	}
	return strings.Join(parts, ",")
}
