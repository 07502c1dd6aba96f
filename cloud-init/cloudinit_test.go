package cloudinit

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"

	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files and example-user-data.yaml from Render")

// goldens are the rendered files committed to the repository. Each one is
// compared byte for byte and validated by the real cloud-init.
var goldens = []struct {
	file string
	p    Params
}{
	{"example-user-data.yaml", ExampleParams()},
	{"testdata/single-host.golden.yaml", Params{
		NodeID:        "gpu-0001",
		Hosts:         []Host{{Name: "node-api.cp.internal", IP: "10.40.0.10"}},
		CAURL:         "https://10.40.0.11:9000",
		CAFingerprint: "a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00abcd",
		Token:         "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJncHUtMDAwMSJ9.c2lnbmF0dXJl",
		NodeAPIURL:    "https://node-api.cp.internal:8443",
	}},
	{"testdata/all-options.golden.yaml", Params{
		NodeID: "rack7.gpu_12",
		Hosts: []Host{
			{Name: "node-api.cp.internal", IP: "fd00:40::10"},
			{Name: "ca.cp.internal", IP: "10.40.0.11"},
			{Name: "registry.cp.internal", IP: "10.40.0.12"},
		},
		CAURL:          "https://ca.cp.internal",
		CAFingerprint:  "A3F1C0FFEE00A3F1C0FFEE00A3F1C0FFEE00A3F1C0FFEE00A3F1C0FFEE00ABCD",
		Token:          "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyYWNrNy5ncHVfMTIifQ.c2ln-_",
		NodeAPIURL:     "https://node-api.cp.internal",
		TokenFile:      "/run/provision/ott.jwt",
		WaitPath:       "/v2/nodes/{node_id}/tasks/wait",
		WaitTimeout:    "2s",
		HostsFile:      "/etc/hosts",
		PKIDir:         "/var/lib/provision/pki",
		StateDir:       "/var/lib/provision",
		Deadline:       "30m",
		RequestTimeout: "10s",
	}},
	// state_dir, pki_dir and the hosts file moved out of what the units may
	// write: drop-ins open exactly those paths, runcmd reloads systemd first.
	{"testdata/moved-paths.golden.yaml", movedParams()},
}

func movedParams() Params {
	p := ExampleParams()
	p.Token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJncHUtMDA0MiJ9.c2ln"
	p.StateDir = "/srv/provision"
	p.PKIDir = "/srv/pki/provision"
	p.HostsFile = "/var/lib/hosts-override/hosts"
	return p
}

func render(t *testing.T, p Params) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Render(&b, p); err != nil {
		t.Fatalf("Render: %v", err)
	}
	return b.Bytes()
}

func TestGolden(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) {
			got := render(t, g.p)
			if *update {
				if err := os.WriteFile(g.file, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(g.file)
			if err != nil {
				t.Fatalf("%v (run go test ./cloud-init -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Render output differs from %s; review the diff and run go test ./cloud-init -update\n--- got ---\n%s", g.file, got)
			}
		})
	}
}

// TestCloudInitSchema runs the real `cloud-init schema` on every committed
// rendered file and on a fresh rendering of each, so that neither a stale
// golden nor a template change can slip past cloud-init's own validator.
func TestCloudInitSchema(t *testing.T) {
	ci := testenv.RequireProgram(t, "cloud-init", "cloud-init")
	dir := t.TempDir()
	for i, g := range goldens {
		fresh := filepath.Join(dir, "rendered-"+filepath.Base(g.file))
		if err := os.WriteFile(fresh, render(t, g.p), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{g.file, fresh} {
			out, err := exec.Command(ci, "schema", "--config-file", f).CombinedOutput()
			if err != nil {
				t.Errorf("golden %d: cloud-init schema --config-file %s: %v\n%s", i, f, err, out)
				continue
			}
			if !strings.Contains(string(out), "Valid cloud-config") {
				t.Errorf("cloud-init schema %s: unexpected output %q", f, out)
			}
		}
	}
}

// TestCloudInitSchemaRejectsBrokenFile proves the schema check above can fail:
// the same validator must reject a user-data with a wrongly typed key.
func TestCloudInitSchemaRejectsBrokenFile(t *testing.T) {
	ci := testenv.RequireProgram(t, "cloud-init", "cloud-init")
	broken := bytes.Replace(render(t, ExampleParams()), []byte("manage_etc_hosts: false"), []byte("manage_etc_hosts: [1, 2]"), 1)
	f := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(f, broken, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(ci, "schema", "--config-file", f).CombinedOutput()
	if err == nil {
		t.Fatalf("cloud-init schema accepted an invalid manage_etc_hosts:\n%s", out)
	}
}

type userData struct {
	ManageEtcHosts *bool `yaml:"manage_etc_hosts"`
	WriteFiles     []struct {
		Path        string `yaml:"path"`
		Owner       string `yaml:"owner"`
		Permissions string `yaml:"permissions"`
		Content     string `yaml:"content"`
		Defer       bool   `yaml:"defer"`
	} `yaml:"write_files"`
	Runcmd [][]string `yaml:"runcmd"`
}

func parse(t *testing.T, b []byte) userData {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("#cloud-config\n")) {
		t.Fatalf("user-data does not start with #cloud-config")
	}
	var ud userData
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&ud); err != nil {
		t.Fatalf("rendered user-data is not the expected YAML: %v", err)
	}
	return ud
}

// checkRendered asserts everything the package promises about one rendering.
func checkRendered(t *testing.T, p Params, b []byte) {
	t.Helper()
	p = p.withDefaults()
	ud := parse(t, b)
	if ud.ManageEtcHosts == nil || *ud.ManageEtcHosts {
		t.Errorf("manage_etc_hosts must be present and false")
	}
	dropIns, err := p.DropIns()
	if err != nil {
		t.Fatalf("DropIns after a successful Render: %v", err)
	}
	want := [][]string{{"sh", "-c", "systemctl enable --now provision-renew.timer provision-verify.timer; timers=$?; systemctl start provision.service && exit $timers"}}
	if len(dropIns) > 0 {
		want[0][2] = "systemctl daemon-reload || exit; " + want[0][2]
	}
	if !reflect.DeepEqual(ud.Runcmd, want) {
		t.Errorf("runcmd = %q, want exactly %q", ud.Runcmd, want)
	}
	if len(ud.WriteFiles) != 2+len(dropIns) {
		t.Fatalf("write_files has %d entries, want %d (config, token, drop-ins)", len(ud.WriteFiles), 2+len(dropIns))
	}
	for i, d := range dropIns {
		e := ud.WriteFiles[2+i]
		if e.Path != d.Path || e.Content != d.Content || e.Permissions != "0644" || e.Owner != "root:root" {
			t.Errorf("drop-in entry %d = %+v, want %+v", i, e, d)
		}
	}
	cfg, tok := ud.WriteFiles[0], ud.WriteFiles[1]
	if cfg.Path != ConfigPath || cfg.Permissions != "0644" || cfg.Owner != "root:root" || cfg.Defer {
		t.Errorf("config entry = %+v", cfg)
	}
	if tok.Path != p.TokenFile || tok.Permissions != "0600" || tok.Owner != "root:root" || tok.Defer {
		t.Errorf("token entry path/permissions/owner = %q %q %q", tok.Path, tok.Permissions, tok.Owner)
	}
	if tok.Content != p.Token {
		t.Errorf("token file content is not exactly the token (length %d, want %d)", len(tok.Content), len(p.Token))
	}
	// The token appears exactly once in the whole file: inside its own entry.
	// (A fuzzed "token" that is also ordinary text of the file, such as
	// "provision", is not a leak; real tokens are long JWTs.)
	q := p
	q.Token = "placeholder-token"
	var base bytes.Buffer
	if err := Render(&base, q); err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(b, []byte(p.Token)); n != 1 && !bytes.Contains(base.Bytes(), []byte(p.Token)) {
		t.Errorf("token occurs %d times in the rendered user-data, want exactly 1", n)
	}
	for i, e := range ud.WriteFiles {
		if i != 1 && strings.Contains(e.Content+e.Path, p.Token) && !bytes.Contains(base.Bytes(), []byte(p.Token)) {
			t.Errorf("token leaked into write_files[%d] (%s)", i, e.Path)
		}
	}
	for _, c := range ud.Runcmd {
		if strings.Contains(strings.Join(c, " "), p.Token) && !bytes.Contains(base.Bytes(), []byte(p.Token)) {
			t.Errorf("token leaked into runcmd")
		}
	}

	// The config entry is the config p describes, as provision reads it.
	back, err := config.Parse(ConfigPath, []byte(cfg.Content))
	if err != nil {
		t.Fatalf("provision rejects the rendered config: %v", err)
	}
	wantCfg, err := p.Config()
	if err != nil {
		t.Fatalf("Params.Config after a successful Render: %v", err)
	}
	if !config.Equal(back, wantCfg) {
		t.Errorf("config round trip:\n got %+v\nwant %+v", back, wantCfg)
	}
}

// TestRenderedConfigLoads feeds the rendered config to provision's own strict
// config parser: what cloud-init writes must be what provision accepts.
func TestRenderedConfigLoads(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) {
			ud := parse(t, render(t, g.p))
			c, err := config.Parse(ConfigPath, []byte(ud.WriteFiles[0].Content))
			if err != nil {
				t.Fatalf("provision rejects the rendered config: %v", err)
			}
			if c.NodeID != g.p.NodeID || c.CA.TokenFile != g.p.withDefaults().TokenFile {
				t.Errorf("parsed node_id/token_file = %q/%q", c.NodeID, c.CA.TokenFile)
			}
		})
	}
}

func TestRenderedContent(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.file, func(t *testing.T) { checkRendered(t, g.p, render(t, g.p)) })
	}
}

func TestValidateRejects(t *testing.T) {
	const secret = "eyJzZWNyZXQ"
	cases := []struct {
		name   string
		mutate func(*Params)
	}{
		{"empty node id", func(p *Params) { p.NodeID = "" }},
		{"newline in node id", func(p *Params) { p.NodeID = "gpu-1\nruncmd: [reboot]" }},
		{"quote in node id", func(p *Params) { p.NodeID = `gpu"1` }},
		{"no hosts", func(p *Params) { p.Hosts = nil }},
		{"host is an IP", func(p *Params) { p.Hosts[0].Name = "10.0.0.1" }},
		{"single-label host", func(p *Params) { p.Hosts[0].Name = "nodeapi" }},
		{"duplicate host", func(p *Params) { p.Hosts[1].Name = "NODE-API.cp.internal" }},
		{"bad ip", func(p *Params) { p.Hosts[0].IP = "10.40.0.300" }},
		{"ip with zone", func(p *Params) { p.Hosts[0].IP = "fe80::1%eth0" }},
		{"non-canonical ip", func(p *Params) { p.Hosts[0].IP = "fd00:0::1" }},
		{"http CA", func(p *Params) { p.CAURL = "http://ca.cp.internal:9000" }},
		{"quote in CA url", func(p *Params) { p.CAURL = `https://ca.cp.internal"/x` }},
		{"CA url with query", func(p *Params) { p.CAURL = "https://ca.cp.internal/?a=b" }},
		{"short fingerprint", func(p *Params) { p.CAFingerprint = "abcd" }},
		{"fingerprint with colons", func(p *Params) { p.CAFingerprint = strings.Repeat("ab:", 31) + "ab" }},
		{"empty token", func(p *Params) { p.Token = "" }},
		{"newline in token", func(p *Params) { p.Token = secret + "\n" }},
		{"quote in token", func(p *Params) { p.Token = secret + `"` }},
		{"space in token", func(p *Params) { p.Token = secret + " x" }},
		{"node api by IP", func(p *Params) { p.NodeAPIURL = "https://10.40.0.10:8443" }},
		{"node api by IPv6", func(p *Params) { p.NodeAPIURL = "https://[fd00::10]:8443" }},
		{"node api with user", func(p *Params) { p.NodeAPIURL = "https://u@node-api.cp.internal" }},
		{"token file on disk", func(p *Params) { p.TokenFile = "/var/lib/provision/token" }},
		{"token file relative", func(p *Params) { p.TokenFile = "run/provision/token" }},
		{"token file unclean", func(p *Params) { p.TokenFile = "/run/../etc/token" }},
		{"wait path relative", func(p *Params) { p.WaitPath = "v1/x" }},
		{"wait path with space", func(p *Params) { p.WaitPath = "/v1/x y" }},
		{"pki dir with newline", func(p *Params) { p.PKIDir = "/var/lib/p\nx" }},
		{"state dir root", func(p *Params) { p.StateDir = "/" }},
		{"bad deadline", func(p *Params) { p.Deadline = "ten minutes" }},
		{"node api with path", func(p *Params) { p.NodeAPIURL = "https://node-api.cp.internal/prefix" }},
		{"node api host not in hosts", func(p *Params) { p.NodeAPIURL = "https://other.cp.internal:8443" }},
		{"wait path without node id", func(p *Params) { p.WaitPath = "/v1/tasks/wait" }},
		{"request timeout too long", func(p *Params) { p.RequestTimeout = "6m" }},
		{"negative timeout", func(p *Params) { p.RequestTimeout = "-5s" }},
		{"wait timeout past the 10m ceiling", func(p *Params) { p.WaitTimeout = "11m" }},
		{"negative wait timeout", func(p *Params) { p.WaitTimeout = "-1s" }},
		{"wait timeout as long as the deadline", func(p *Params) { p.WaitTimeout, p.Deadline = "5s", "5s" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := ExampleParams()
			p.Token = secret
			c.mutate(&p)
			var b bytes.Buffer
			err := Render(&b, p)
			if err == nil {
				t.Fatalf("Render accepted invalid params")
			}
			if b.Len() != 0 {
				t.Errorf("Render wrote %d bytes despite the error", b.Len())
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error repeats the token: %v", err)
			}
		})
	}
}

// FuzzRender: whatever the node id and token are, Render either refuses them
// or produces user-data whose structure and config survive a strict parse.
func FuzzRender(f *testing.F) {
	f.Add("gpu-0042", "eyJhbGciOiJFUzI1NiJ9.eyJ9.c2ln", "node-api.cp.internal")
	f.Add("gpu\n1", "a'b", "x.y")
	f.Add("a: b", "#x", "a..b")
	f.Add("g", "a.b.c.d.e", "a-.b")
	f.Fuzz(func(t *testing.T, nodeID, token, host string) {
		p := ExampleParams()
		p.NodeID, p.Token = nodeID, token
		p.Hosts[0].Name = host
		p.NodeAPIURL = "https://" + host + ":8443"
		var b bytes.Buffer
		if err := Render(&b, p); err != nil {
			return
		}
		checkRendered(t, p, b.Bytes())
	})
}

// TestZeroWaitTimeoutRenders: wait_timeout = "0s" (no long poll) is valid in
// provision's config, so the generator must render it, and provision must
// read it back as 0s, not as the 1s default.
func TestZeroWaitTimeoutRenders(t *testing.T) {
	p := ExampleParams()
	p.WaitTimeout = "0s"
	ud := parse(t, render(t, p))
	c, err := config.Parse(ConfigPath, []byte(ud.WriteFiles[0].Content))
	if err != nil {
		t.Fatalf("provision rejects the rendered config: %v", err)
	}
	if c.NodeAPI.WaitTimeout.Duration != 0 {
		t.Fatalf("wait_timeout = %s, want 0s", c.NodeAPI.WaitTimeout)
	}
}

// TestDropIns: each moved path is opened in exactly the units that write
// it, a directory provision creates is made before provision.service
// starts, the conditions follow the moved paths (the done marker in
// state_dir, pki_dir/current for renew), and the default paths need
// nothing.
func TestDropIns(t *testing.T) {
	const svc, ver, ren = "/etc/systemd/system/provision.service.d/provision-paths.conf",
		"/etc/systemd/system/provision-verify.service.d/provision-paths.conf",
		"/etc/systemd/system/provision-renew.service.d/provision-paths.conf"
	for _, tc := range []struct {
		name string
		set  func(c *config.Config)
		want map[string][]string // drop-in path -> lines it must hold; exactly these drop-ins
		not  []string            // lines no drop-in may hold
	}{
		{"default paths", func(*config.Config) {}, map[string][]string{}, nil},
		{"state, pki and hosts moved", func(c *config.Config) {
			c.Paths.StateDir, c.Paths.PKIDir, c.Paths.HostsFile = "/srv/provision", "/srv/pki/provision", "/var/lib/hosts-override/hosts"
		}, map[string][]string{
			svc: {"[Unit]\nConditionPathExists=\nConditionPathExists=!/srv/provision/done/%m\n", "ReadWritePaths=-/var/lib/hosts-override\n",
				"ReadWritePaths=-/srv/provision\n", "ReadWritePaths=-/srv/pki/provision\n",
				"ExecStartPre=+/bin/mkdir -p -m 0700 /srv/provision\n", "ExecStartPre=+/bin/mkdir -p -m 0700 /srv/pki/provision\n"},
			ver: {"[Service]\nReadWritePaths=-/srv/provision/tasks\n"},
			ren: {"[Unit]\nConditionPathExists=\nConditionPathExists=/srv/pki/provision/current\n", "ReadWritePaths=-/srv/provision\n", "ReadWritePaths=-/srv/pki/provision\n"},
		}, []string{"/run/provision", "ReadWritePaths=/etc\n"}},
		// Only pki_dir moved: provision.service writes it, renew writes it
		// and must look for current there; verify and the done marker
		// need nothing.
		{"pki_dir only", func(c *config.Config) { c.Paths.PKIDir = "/srv/pki" }, map[string][]string{
			svc: {"[Service]\nReadWritePaths=-/srv/pki\nExecStartPre=+/bin/mkdir -p -m 0700 /srv/pki\n"},
			ren: {"ConditionPathExists=\nConditionPathExists=/srv/pki/current\n", "ReadWritePaths=-/srv/pki\n"},
		}, []string{"done/%m", "/var/lib/provision"}},
		// pki_dir moved under the default state_dir: renew's
		// ReadWritePaths=/var/lib/provision covers it, the condition does not.
		{"pki_dir inside the default state_dir", func(c *config.Config) { c.Paths.PKIDir = "/var/lib/provision/certs" }, map[string][]string{
			ren: {"[Unit]\nConditionPathExists=\nConditionPathExists=/var/lib/provision/certs/current\n"},
		}, []string{"ReadWritePaths"}},
		{"textfile_dir moved", func(c *config.Config) { c.Metrics.TextfileDir = "/srv/metrics" }, map[string][]string{
			svc: {"[Service]\nReadWritePaths=-/srv/metrics\n"},
			ver: {"[Service]\nReadWritePaths=-/srv/metrics\n"},
			ren: {"[Service]\nReadWritePaths=-/srv/metrics\n"},
		}, []string{"Condition"}},
		{"textfile_dir moved, metrics off", func(c *config.Config) { c.Metrics.TextfileDir, c.Metrics.Enabled = "/srv/metrics", false }, map[string][]string{}, nil},
		{"token file moved within /run", func(c *config.Config) { c.CA.TokenFile = "/run/ott/token.jwt" }, map[string][]string{
			svc: {"[Service]\nReadWritePaths=-/run/ott\n"},
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := exampleConfig(t)
			tc.set(cfg)
			got, err := DropInsFor(cfg)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, d := range got {
				seen[d.Path] = true
				lines, ok := tc.want[d.Path]
				if !ok {
					t.Errorf("unexpected drop-in %s:\n%s", d.Path, d.Content)
				}
				for _, l := range lines {
					if !strings.Contains(d.Content, l) {
						t.Errorf("%s lacks %q:\n%s", d.Path, l, d.Content)
					}
				}
				for _, l := range tc.not {
					if strings.Contains(d.Content, l) {
						t.Errorf("%s holds %q:\n%s", d.Path, l, d.Content)
					}
				}
				// Without '-', a directory that does not exist yet fails
				// the unit's namespace, even for the ExecStartPre=+mkdir
				// that would create it (systemd 252; tests/boot).
				for _, l := range strings.Split(d.Content, "\n") {
					if strings.HasPrefix(l, "ReadWritePaths=") && !strings.HasPrefix(l, "ReadWritePaths=-") {
						t.Errorf("%s: %q fails the unit while the path does not exist; want ReadWritePaths=-", d.Path, l)
					}
				}
			}
			for p := range tc.want {
				if !seen[p] {
					t.Errorf("no drop-in %s", p)
				}
			}
		})
	}
}

// exampleConfig is ExampleParams as provision's loader reads it.
func exampleConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := ExampleParams().Config()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestDropInsRefuse: a path the sandbox must keep read-only or hidden is
// refused with the config key, its value and what to do, and nothing is
// rendered.
func TestDropInsRefuse(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func(*config.Config)
		want string
	}{
		{"state under /usr", func(c *config.Config) { c.Paths.StateDir = "/usr/local/provision" }, `paths.state_dir "/usr/local/provision"`},
		{"pki in /tmp", func(c *config.Config) { c.Paths.PKIDir = "/tmp/pki" }, `paths.pki_dir "/tmp/pki"`},
		{"state in a home", func(c *config.Config) { c.Paths.StateDir = "/root/provision" }, `paths.state_dir "/root/provision"`},
		{"hosts file at the root", func(c *config.Config) { c.Paths.HostsFile = "/hosts" }, `paths.hosts_file "/hosts": provision must write in /, which is the filesystem root`},
		{"hosts file under /boot", func(c *config.Config) { c.Paths.HostsFile = "/boot/hosts" }, `paths.hosts_file "/boot/hosts"`},
		{"token under /run/user", func(c *config.Config) { c.CA.TokenFile = "/run/user/0/token" }, `ca.token_file "/run/user/0/token"`},
		{"metrics in /var/tmp", func(c *config.Config) { c.Metrics.TextfileDir = "/var/tmp/metrics" }, `metrics.textfile_dir "/var/tmp/metrics"`},
		{"metrics dir with a space", func(c *config.Config) { c.Metrics.TextfileDir = "/srv/node exporter" }, `metrics.textfile_dir: "/srv/node exporter"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := exampleConfig(t)
			c.set(cfg)
			var b bytes.Buffer
			err := RenderConfig(&b, cfg, "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJncHUtMDA0MiJ9.c2ln")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("RenderConfig: %v; want an error containing %q", err, c.want)
			}
			if b.Len() != 0 {
				t.Errorf("RenderConfig wrote %d bytes despite the error", b.Len())
			}
		})
	}
}

// TestOneRuleSetWithTheConfig: userdata and provision judge a config by the
// same rules. A single-label host name, which the config accepts, renders
// (userdata used to refuse it with exit 3); a state_dir the config refuses
// (a shared system directory) is refused by Render, naming the key.
func TestOneRuleSetWithTheConfig(t *testing.T) {
	p := ExampleParams()
	p.Hosts = []Host{{Name: "nodeapi", IP: "10.40.0.10"}, p.Hosts[len(p.Hosts)-1]}
	p.NodeAPIURL = "https://nodeapi:8443"
	var b bytes.Buffer
	if err := Render(&b, p); err != nil {
		t.Fatalf("a single-label host name the config accepts: %v", err)
	}
	p = ExampleParams()
	p.StateDir = "/var/lib"
	err := Render(&b, p)
	if err == nil || !strings.Contains(err.Error(), "paths.state_dir") || !strings.Contains(err.Error(), "provision would refuse") {
		t.Fatalf("state_dir /var/lib: %v, want the config loader's refusal naming paths.state_dir", err)
	}
}

// roundTripSources are configs as operators write them, one per row of
// TestRenderConfigRoundTrip: together they set every key of every section.
var roundTripSources = []struct{ name, toml string }{
	{"required keys only", `node_id = "gpu-0001"
[[hosts]]
name = "node-api.cp.internal"
ip = "10.40.0.10"
[ca]
url = "https://10.40.0.11:9000"
fingerprint = "a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00abcd"
[node_api]
url = "https://node-api.cp.internal:8443"
`},
	{"every section, nothing default", `node_id = "rack7.gpu_12"
[[hosts]]
name = "node-api.cp.internal"
ip = "fd00:40::10"
[[hosts]]
name = "ca.cp.internal"
ip = "10.40.0.11"
[ca]
url = "https://ca.cp.internal"
fingerprint = "A3:F1:C0:FF:EE:00:A3:F1:C0:FF:EE:00:A3:F1:C0:FF:EE:00:A3:F1:C0:FF:EE:00:A3:F1:C0:FF:EE:00:AB:CD"
token_file = "/run/provision/ott.jwt"
[node_api]
url = "https://node-api.cp.internal"
wait_path = "/v2/nodes/{node_id}/tasks/wait"
wait_timeout = "0s"
[paths]
hosts_file = "/var/lib/hosts-override/hosts"
pki_dir = "/srv/pki/provision"
state_dir = "/srv/provision"
[bootstrap]
deadline = "30m"
request_timeout = "10s"
[metrics]
enabled = false
textfile_dir = "/srv/metrics"
[renew]
fraction = 0.5
splay = "0s"
rekey = false
post_hook = ["/usr/bin/systemctl", "reload", "node-agent"]
post_hook_timeout = "2m"
`},
	{"metrics moved, renew partly set", `node_id = "gpu-0042"
[[hosts]]
name = "node-api.cp.internal"
ip = "10.40.0.10"
[ca]
url = "https://ca.cp.internal:9000"
fingerprint = "a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00abcd"
[node_api]
url = "https://node-api.cp.internal:8443"
[metrics]
textfile_dir = "/var/lib/node-exporter/textfile"
[renew]
fraction = 0.75
post_hook = []
`},
	// A hook argument is any string: quotes, backslashes, control
	// characters, '#', ": ", a template action, and characters beyond
	// ASCII, U+2028 (a line break to YAML 1.1) and one beyond the BMP.
	{"a hostile post_hook", `node_id = "gpu-0042"
[[hosts]]
name = "node-api.cp.internal"
ip = "10.40.0.10"
[ca]
url = "https://ca.cp.internal:9000"
fingerprint = "a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00a3f1c0ffee00abcd"
[node_api]
url = "https://node-api.cp.internal:8443"
[renew]
post_hook = ["/bin/sh", "-c", "echo \"renewed\" 'x' \\ # not: a comment\n\tnext line \u007f", "{{ .Token }}", "caf\u00e9 \u2028 \u0085 \U0001F680", "---", "- [a]"]
`},
}

// TestRenderConfigRoundTrip: render each source config, read the
// provision.toml the user-data writes the way cloud-init does (PyYAML, the
// parser cloud-init itself uses) and load it with provision's own config
// loader: it equals the source config, every section and key. The real
// `cloud-init schema` accepts each rendering.
func TestRenderConfigRoundTrip(t *testing.T) {
	python := testenv.RequireProgram(t, "python3", "python3-yaml")
	ci := testenv.RequireProgram(t, "cloud-init", "cloud-init")
	const token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJncHUtMDA0MiJ9.c2ln"
	for _, src := range roundTripSources {
		t.Run(src.name, func(t *testing.T) {
			want, err := config.Parse("source.toml", []byte(src.toml))
			if err != nil {
				t.Fatalf("the source config: %v", err)
			}
			var b bytes.Buffer
			if err := RenderConfig(&b, want, token); err != nil {
				t.Fatalf("RenderConfig: %v", err)
			}
			dir := t.TempDir()
			ud := filepath.Join(dir, "user-data")
			if err := os.WriteFile(ud, b.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(ci, "schema", "--config-file", ud).CombinedOutput(); err != nil {
				t.Fatalf("cloud-init schema: %v\n%s", err, out)
			}
			// What cloud-init's write_files would write at ConfigPath.
			script := `import sys, yaml
for f in yaml.safe_load(open(sys.argv[1]))["write_files"]:
    if f["path"] == sys.argv[2]:
        open(sys.argv[3], "w", encoding="utf-8").write(f["content"])`
			written := filepath.Join(dir, "provision.toml")
			if out, err := exec.Command(python, "-c", script, ud, ConfigPath, written).CombinedOutput(); err != nil {
				t.Fatalf("reading the user-data with PyYAML: %v\n%s", err, out)
			}
			got, err := config.Load(written)
			if err != nil {
				t.Fatalf("provision's loader refuses the config the user-data writes: %v\n%s", err, b.String())
			}
			if !config.Equal(got, want) {
				t.Errorf("round trip changed the config:\n got %+v\nwant %+v\n%s", got, want, b.String())
			}
			if !strings.Contains(b.String(), "[renew]") || !strings.Contains(b.String(), "[metrics]") {
				t.Errorf("the user-data lacks [renew] or [metrics]:\n%s", b.String())
			}
		})
	}
}

// TestTPMDropIns: key.store = "tpm" gives each of the three units the TPM
// drop-in naming key.tpm's device, in the rendered user-data too; a file
// key or a software TPM's socket gives none.
func TestTPMDropIns(t *testing.T) {
	base := exampleConfig(t)
	for _, tc := range []struct {
		store, tpm string
		want       int
	}{{"tpm", "/dev/tpmrm1", 3}, {"tpm", "swtpm:path=/run/swtpm/sock", 0}, {"file", "/dev/tpmrm0", 0}} {
		cfg := *base
		cfg.Key.Store, cfg.Key.TPM = tc.store, tc.tpm
		ds, err := DropInsFor(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, d := range ds {
			if strings.HasSuffix(d.Path, "/provision-tpm.conf") {
				n++
				if !strings.Contains(d.Content, "\nDeviceAllow="+tc.tpm+" rw\n") || !strings.Contains(d.Content, "\nSupplementaryGroups=tss\n") {
					t.Errorf("%s:\n%s", d.Path, d.Content)
				}
			}
		}
		if n != tc.want {
			t.Errorf("store %s tpm %s: %d TPM drop-ins, want %d", tc.store, tc.tpm, n, tc.want)
		}
		if tc.want == 0 {
			continue
		}
		renderedWithDropIns(t, &cfg, "provision-tpm.conf")
	}
}

// renderedWithDropIns renders cfg's user-data and requires it to write the
// drop-in name for each of the three units, and to reload systemd before
// its start.
func renderedWithDropIns(t *testing.T, cfg *config.Config, name string) {
	t.Helper()
	var b strings.Builder
	if err := RenderConfig(&b, cfg, "a.b.c"); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"provision.service", "provision-verify.service", "provision-renew.service"} {
		if !strings.Contains(b.String(), "- path: /etc/systemd/system/"+u+".d/"+name) {
			t.Errorf("the user-data lacks %s's %s", u, name)
		}
	}
	if !strings.Contains(b.String(), `systemctl daemon-reload || exit; systemctl enable --now `) {
		t.Errorf("the user-data does not reload systemd before the start, with drop-ins")
	}
}

// TestKeyGroupDropIns: paths.key_group gives each of the three units the
// key-group drop-in naming that group (the units' membership of it, which
// giving files to it without CAP_CHOWN needs), in the rendered user-data
// too, which then reloads systemd first; no key group gives none.
func TestKeyGroupDropIns(t *testing.T) {
	base := exampleConfig(t)
	for _, tc := range []struct {
		group string
		want  int
	}{{"gpu-agents", 3}, {"4242", 3}, {"", 0}} {
		cfg := *base
		cfg.Paths.KeyGroup = tc.group
		ds, err := DropInsFor(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, d := range ds {
			if strings.HasSuffix(d.Path, "/provision-key-group.conf") {
				n++
				if !strings.Contains(d.Content, "\nSupplementaryGroups="+tc.group+"\n") || strings.Count(d.Content, "\n[Service]\n") != 1 {
					t.Errorf("%s:\n%s", d.Path, d.Content)
				}
			}
		}
		if n != tc.want {
			t.Errorf("key_group %q: %d key-group drop-ins, want %d", tc.group, n, tc.want)
		}
		if tc.want == 0 {
			continue
		}
		renderedWithDropIns(t, &cfg, "provision-key-group.conf")
	}
}

// TestRuncmdChecksGroups: a drop-in that makes the units members of a
// group (tss for key.store = "tpm", paths.key_group's) keeps them from
// starting at all where that group does not exist (status 216/GROUP). The
// user-data's runcmd checks each group first and, when one is missing,
// says which and what provides it, and starts nothing (the token stays
// unused); with every group there it reloads and starts as before. The
// rendered script itself runs, with getent and systemctl stubbed.
func TestRuncmdChecksGroups(t *testing.T) {
	sh := testenv.RequireProgram(t, "sh", "dash")
	cfg := *exampleConfig(t)
	cfg.Key.Store, cfg.Key.TPM, cfg.Paths.KeyGroup = "tpm", "/dev/tpmrm0", "gpu-agents"
	var b strings.Builder
	if err := RenderConfig(&b, &cfg, "a.b.c"); err != nil {
		t.Fatal(err)
	}
	ud := parse(t, []byte(b.String()))
	if len(ud.Runcmd) != 1 || len(ud.Runcmd[0]) != 3 || ud.Runcmd[0][0] != "sh" {
		t.Fatalf("runcmd %q", ud.Runcmd)
	}
	script := ud.Runcmd[0][2]
	for _, tc := range []struct {
		present, missing string
	}{{"tss gpu-agents", ""}, {"gpu-agents", "tss"}, {"tss", "gpu-agents"}} {
		t.Run("present "+tc.present, func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "systemctl.log")
			stubs := map[string]string{
				"getent":    "#!/bin/sh\ncase \" " + tc.present + " \" in *\" $2 \"*) echo \"$2:x:4242:\"; exit 0;; esac\nexit 2\n",
				"systemctl": "#!/bin/sh\necho \"$*\" >> " + log + "\n",
			}
			for name, body := range stubs {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(sh, "-c", script)
			cmd.Env = []string{"PATH=" + dir + ":/usr/bin:/bin"}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			calls, _ := os.ReadFile(log)
			if tc.missing == "" {
				if err != nil || !strings.Contains(string(calls), "daemon-reload") || !strings.Contains(string(calls), "start provision.service") {
					t.Fatalf("every group there: %v %s; systemctl %q", err, stderr.String(), calls)
				}
				return
			}
			msg := stderr.String()
			if err == nil || len(calls) != 0 || !strings.Contains(msg, "group "+tc.missing+" does not exist") || !strings.Contains(msg, "216/GROUP") || !strings.Contains(msg, "tpm-udev") {
				t.Fatalf("group %s missing: %v, systemctl %q, stderr %q", tc.missing, err, calls, msg)
			}
		})
	}
}
