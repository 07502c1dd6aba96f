package firstboot

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/nodetest"
)

// userdataConfig is the contract's example config, as an operator keeps one
// per node on the machine that renders user-data.
const userdataConfig = `node_id = "gpu-0042"

[[hosts]]
name = "node-api.cp.internal"
ip   = "10.40.0.10"

[[hosts]]
name = "ca.cp.internal"
ip   = "10.40.0.11"

[ca]
url         = "https://ca.cp.internal:9000"
fingerprint = "3f1c2e5d8a9b0c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d"
token_file  = "/run/provision/token"

[node_api]
url          = "https://node-api.cp.internal:8443"
wait_path    = "/v1/nodes/{node_id}/tasks/wait"
wait_timeout = "1s"

[paths]
hosts_file = "/etc/hosts"
pki_dir    = "/var/lib/provision/pki"
state_dir  = "/var/lib/provision"

[bootstrap]
deadline        = "10m"
request_timeout = "5s"
`

// userdataToken is shaped like a step-ca one-time token (a JWT); userdata
// never contacts the CA, so it need not be a live one.
const userdataToken = "eyJhbGciOiJFUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJncHUtMDA0MiIsInNhbnMiOlsiZ3B1LTAwNDIiXX0.dGVzdC1zaWduYXR1cmUtb2YtYS1vbmUtdGltZS10b2tlbg"

// userData is the part of #cloud-config the checks read.
type userData struct {
	ManageEtcHosts *bool `yaml:"manage_etc_hosts"`
	WriteFiles     []struct {
		Path        string `yaml:"path"`
		Permissions string `yaml:"permissions"`
		Content     string `yaml:"content"`
	} `yaml:"write_files"`
	Runcmd []any `yaml:"runcmd"`
}

// TestUserdataCommand: `provision userdata` renders user-data that the real
// cloud-init accepts, with the token only in its own 0600 file entry,
// manage_etc_hosts off, and a config that provision itself parses back to
// the operator's values; and it refuses bad input with the contract's exit
// codes.
func TestUserdataCommand(t *testing.T) {
	t.Parallel()
	cloudInit := testenv.RequireProgram(t, "cloud-init", "cloud-init") // validated by the real `cloud-init schema`
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := write("gpu-0042.toml", userdataConfig, 0o644)
	tok := write("token.jwt", userdataToken+"\n", 0o600)
	ipURL := write("ip-url.toml", strings.Replace(userdataConfig, "https://node-api.cp.internal:8443", "https://10.40.0.10:8443", 1), 0o644)
	typo := write("typo.toml", strings.Replace(userdataConfig, "wait_timeout", "wait_timout", 1), 0o644)

	for _, tc := range []struct {
		name string
		args []string
		out  string // --out file, relative to dir
		code int
		// stderrHas must all appear in stderr (the key a bad config names).
		stderrHas []string
	}{
		{name: "to stdout", args: []string{"--config", cfg, "--token-file", tok}},
		{name: "to --out", args: []string{"--config", cfg, "--token-file", tok}, out: "user-data.yaml"},
		{name: "missing --token-file", args: []string{"--config", cfg}, code: 2, stderrHas: []string{"--token-file"}},
		{name: "unreadable --token-file", args: []string{"--config", cfg, "--token-file", filepath.Join(dir, "absent")}, code: 2, stderrHas: []string{"--token-file"}},
		{name: "config with an IP literal node API URL", args: []string{"--config", ipURL, "--token-file", tok}, code: 3, stderrHas: []string{"node_api.url"}},
		{name: "config with a misspelt key", args: []string{"--config", typo, "--token-file", tok}, code: 3, stderrHas: []string{"node_api.wait_timout", "wait_timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"userdata"}, tc.args...)
			outPath := ""
			if tc.out != "" {
				outPath = filepath.Join(t.TempDir(), tc.out)
				args = append(args, "--out", outPath)
			}
			r := nodetest.RunBinary(t, args...)
			if strings.Contains(r.Stderr, userdataToken) || (outPath != "" && strings.Contains(r.Stdout, userdataToken)) {
				t.Fatal("the token was printed")
			}
			nodetest.WantExit(t, r, tc.code)
			for _, s := range tc.stderrHas {
				if !strings.Contains(r.Stderr, s) {
					t.Errorf("stderr does not name %q:\n%s", s, r.Stderr)
				}
			}
			if tc.code != 0 {
				if r.Stdout != "" {
					t.Errorf("a refused render printed user-data:\n%s", r.Stdout)
				}
				return
			}
			ud := r.Stdout
			if outPath != "" {
				fi, err := os.Stat(outPath)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("--out file mode %v, want 0600 (it holds the token)", fi.Mode().Perm())
				}
				if r.Stdout != "" {
					t.Errorf("with --out, stdout must be empty, got %q", r.Stdout)
				}
				ud = string(readFile(t, outPath))
			}
			checkUserData(t, cloudInit, ud)
		})
	}
}

func checkUserData(t *testing.T, cloudInit, ud string) {
	t.Helper()
	if !strings.HasPrefix(ud, "#cloud-config\n") {
		t.Fatalf("user-data does not start with #cloud-config:\n%s", ud)
	}
	p := filepath.Join(t.TempDir(), "user-data.yaml")
	if err := os.WriteFile(p, []byte(ud), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(cloudInit, "schema", "--config-file", p).CombinedOutput()
	if err != nil {
		t.Fatalf("cloud-init schema --config-file rejects the rendered user-data: %v\n%s\n%s", err, out, ud)
	}
	if n := strings.Count(ud, userdataToken); n != 1 {
		t.Fatalf("the token appears %d times in the user-data, want exactly once", n)
	}
	var doc userData
	if err := yaml.Unmarshal([]byte(ud), &doc); err != nil {
		t.Fatalf("user-data is not YAML: %v", err)
	}
	if doc.ManageEtcHosts == nil || *doc.ManageEtcHosts {
		t.Errorf("manage_etc_hosts is %v, want false (cloud-init would drop provision's hosts block on every boot)", doc.ManageEtcHosts)
	}
	if len(doc.Runcmd) != 1 {
		t.Errorf("runcmd has %d entries, want 1 (cloud-init reports only the last one's status)", len(doc.Runcmd))
	}
	var gotCfg, gotTok bool
	for _, f := range doc.WriteFiles {
		switch f.Path {
		case "/run/provision/token":
			gotTok = true
			if strings.TrimSpace(f.Content) != userdataToken || f.Permissions != "0600" {
				t.Errorf("token entry: permissions %q, content is the token: %v", f.Permissions, strings.TrimSpace(f.Content) == userdataToken)
			}
		case "/etc/provision/provision.toml":
			gotCfg = true
			if strings.Contains(f.Content, userdataToken) {
				t.Error("the config entry holds the token")
			}
			c, err := config.Parse(f.Path, []byte(f.Content))
			if err != nil {
				t.Fatalf("provision cannot parse the config it rendered: %v\n%s", err, f.Content)
			}
			want, err := config.Parse("input", []byte(userdataConfig))
			if err != nil {
				t.Fatal(err)
			}
			if c.NodeID != want.NodeID || c.CA != want.CA || c.NodeAPI != want.NodeAPI || c.Paths != want.Paths ||
				c.Bootstrap != want.Bootstrap || len(c.Hosts) != len(want.Hosts) {
				t.Errorf("the rendered config differs from the input:\nrendered %+v\ninput    %+v", c, want)
			}
			for i := range min(len(c.Hosts), len(want.Hosts)) {
				if c.Hosts[i] != want.Hosts[i] {
					t.Errorf("hosts[%d]: rendered %+v, input %+v", i, c.Hosts[i], want.Hosts[i])
				}
			}
		}
	}
	if !gotCfg || !gotTok {
		t.Errorf("write_files: config entry %v, token entry %v; want both", gotCfg, gotTok)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
