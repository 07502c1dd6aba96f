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
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// userdataNode is the node TestUserdataCommand renders user-data for.
const userdataNode = "gpu-0042"

// userdataConfig is a config an operator keeps for the node on the
// machine that renders user-data, against cp: every section set, [renew]
// and [metrics] included, and state_dir, pki_dir and the metrics directory
// moved, so every packaged unit needs a drop-in.
func userdataConfig(t *testing.T, cp *controlplane.ControlPlane) string {
	t.Helper()
	c := cp.NodeConfig(userdataNode)
	c.Paths.StateDir, c.Paths.PKIDir = "/srv/provision", "/srv/provision/pki"
	no := false
	c.Renew = &controlplane.RenewConfig{Fraction: 0.5, Splay: "10m", Rekey: &no,
		PostHook: []string{"/usr/bin/systemctl", "reload", "node-agent"}, PostHookTimeout: "20s"}
	b, err := c.TOML()
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n[metrics]\nenabled = true\ntextfile_dir = \"/srv/metrics\"\n"
}

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
// cloud-init accepts, with the token (a real one from step-ca) only in its
// own 0600 file entry, manage_etc_hosts off, the whole config (provision's
// own loader reads back exactly the operator's config, [renew] and
// [metrics] included) and a drop-in for every unit whose paths moved; and
// it refuses bad input with the contract's exit codes: a config error (3),
// and a token that cannot enroll this node at this CA (20), before
// anything is written.
func TestUserdataCommand(t *testing.T) {
	t.Parallel()
	cloudInit := testenv.RequireProgram(t, "cloud-init", "cloud-init") // validated by the real `cloud-init schema`
	cp := controlplane.Start(t, controlplane.Options{})
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mint := func(opts ...controlplane.TokenOption) string {
		tok, err := cp.Token(userdataNode, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	src := userdataConfig(t, cp)
	cfg := write("gpu-0042.toml", src, 0o644)
	token := mint()
	tok := write("token.jwt", token+"\n", 0o600)
	apiURL := cp.NodeConfig(userdataNode).NodeAPI.URL
	ipURL := write("ip-url.toml", strings.Replace(src, apiURL, strings.Replace(apiURL, controlplane.DefaultAPIHostname, "10.40.0.10", 1), 1), 0o644)
	typo := write("typo.toml", strings.Replace(src, "wait_timeout", "wait_timout", 1), 0o644)
	other := write("other.jwt", mint(controlplane.TokenForNode("gpu-0043")), 0o600)
	expired := write("expired.jwt", mint(controlplane.TokenExpired()), 0o600)
	garbage := write("garbage.jwt", "not-a-token\n", 0o600)

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
		{name: "another node's token", args: []string{"--config", cfg, "--token-file", other}, out: "refused.yaml", code: 20, stderrHas: []string{other, `"gpu-0043"`}},
		{name: "an expired token", args: []string{"--config", cfg, "--token-file", expired}, out: "refused.yaml", code: 20, stderrHas: []string{expired, "expired"}},
		{name: "a token that is not one", args: []string{"--config", cfg, "--token-file", garbage}, out: "refused.yaml", code: 20, stderrHas: []string{garbage, "not a one-time token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"userdata"}, tc.args...)
			outPath := ""
			if tc.out != "" {
				outPath = filepath.Join(t.TempDir(), tc.out)
				args = append(args, "--out", outPath)
			}
			r := nodetest.RunBinary(t, args...)
			if strings.Contains(r.Stderr, token) || (outPath != "" && strings.Contains(r.Stdout, token)) {
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
				if outPath != "" && exists(outPath) {
					t.Errorf("a refused render wrote %s", outPath)
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
			checkUserData(t, cloudInit, ud, src, token)
		})
	}
}

// unitsWithDropIns are the drop-ins userdataConfig's moved paths need.
var unitsWithDropIns = []string{
	"/etc/systemd/system/provision.service.d/provision-paths.conf",
	"/etc/systemd/system/provision-verify.service.d/provision-paths.conf",
	"/etc/systemd/system/provision-renew.service.d/provision-paths.conf",
}

func checkUserData(t *testing.T, cloudInit, ud, src, token string) {
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
	if n := strings.Count(ud, token); n != 1 {
		t.Fatalf("the token appears %d times in the user-data, want exactly once", n)
	}
	var doc userData
	if err := yaml.Unmarshal([]byte(ud), &doc); err != nil {
		t.Fatalf("user-data is not YAML: %v", err)
	}
	if doc.ManageEtcHosts == nil || *doc.ManageEtcHosts {
		t.Errorf("manage_etc_hosts is %v, want false (cloud-init would drop provision's hosts block on every boot)", doc.ManageEtcHosts)
	}
	if len(doc.Runcmd) != 1 || !strings.Contains(ud, `systemctl daemon-reload || exit; systemctl enable --now provision-renew.timer provision-verify.timer; timers=$?; systemctl start provision.service && exit $timers`) {
		t.Errorf("runcmd %v: want one entry that reloads systemd (drop-ins), enables the timers and starts provision.service", doc.Runcmd)
	}
	files := map[string]string{}
	for _, f := range doc.WriteFiles {
		files[f.Path] = f.Content
		if f.Path == "/run/provision/token" && (strings.TrimSpace(f.Content) != token || f.Permissions != "0600") {
			t.Errorf("token entry: permissions %q, content is the token: %v", f.Permissions, strings.TrimSpace(f.Content) == token)
		}
	}
	if _, ok := files["/run/provision/token"]; !ok {
		t.Error("write_files has no token entry")
	}
	for _, d := range unitsWithDropIns {
		if _, ok := files[d]; !ok {
			t.Errorf("write_files has no drop-in %s", d)
		}
	}
	if !strings.Contains(files[unitsWithDropIns[2]], "ConditionPathExists=/srv/provision/pki/current") {
		t.Errorf("the renew drop-in does not move its condition to pki_dir:\n%s", files[unitsWithDropIns[2]])
	}
	rendered, ok := files["/etc/provision/provision.toml"]
	if !ok {
		t.Fatal("write_files has no config entry")
	}
	if strings.Contains(rendered, token) {
		t.Error("the config entry holds the token")
	}
	c, err := config.Parse("provision.toml", []byte(rendered))
	if err != nil {
		t.Fatalf("provision cannot parse the config it rendered: %v\n%s", err, rendered)
	}
	want, err := config.Parse("input", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if !config.Equal(c, want) {
		t.Errorf("the rendered config differs from the input:\nrendered %+v\ninput    %+v", c, want)
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
