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

	"github.com/BurntSushi/toml"
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

// contract mirrors the provision config (docs/configuration.md); decoding is
// strict: any key the contract does not know fails the test.
type contract struct {
	NodeID string `toml:"node_id"`
	Hosts  []struct {
		Name string `toml:"name"`
		IP   string `toml:"ip"`
	} `toml:"hosts"`
	CA struct {
		URL         string `toml:"url"`
		Fingerprint string `toml:"fingerprint"`
		TokenFile   string `toml:"token_file"`
	} `toml:"ca"`
	NodeAPI struct {
		URL         string `toml:"url"`
		WaitPath    string `toml:"wait_path"`
		WaitTimeout string `toml:"wait_timeout"`
	} `toml:"node_api"`
	Paths struct {
		HostsFile string `toml:"hosts_file"`
		PKIDir    string `toml:"pki_dir"`
		StateDir  string `toml:"state_dir"`
	} `toml:"paths"`
	Bootstrap struct {
		Deadline       string `toml:"deadline"`
		RequestTimeout string `toml:"request_timeout"`
	} `toml:"bootstrap"`
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
	want := [][]string{{"systemctl", "start", "provision.service"}}
	if len(dropIns) > 0 {
		want = [][]string{{"sh", "-c", "systemctl daemon-reload && exec systemctl start provision.service"}}
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

	var c contract
	md, err := toml.Decode(cfg.Content, &c)
	if err != nil {
		t.Fatalf("config content is not TOML: %v", err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Errorf("config has keys outside the contract: %v", u)
	}
	got := Params{
		NodeID: c.NodeID, CAURL: c.CA.URL, CAFingerprint: c.CA.Fingerprint, Token: p.Token,
		NodeAPIURL: c.NodeAPI.URL, TokenFile: c.CA.TokenFile, WaitPath: c.NodeAPI.WaitPath,
		WaitTimeout: c.NodeAPI.WaitTimeout, HostsFile: c.Paths.HostsFile, PKIDir: c.Paths.PKIDir,
		StateDir: c.Paths.StateDir, Deadline: c.Bootstrap.Deadline, RequestTimeout: c.Bootstrap.RequestTimeout,
	}
	for _, h := range c.Hosts {
		got.Hosts = append(got.Hosts, Host{Name: h.Name, IP: h.IP})
	}
	if !reflect.DeepEqual(got, p) {
		t.Errorf("config round trip:\n got %+v\nwant %+v", got, p)
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

// TestDropIns: each moved path is opened in exactly the unit that writes it,
// a directory provision creates is made before the unit starts, the done
// marker condition follows state_dir, and the default paths need nothing.
func TestDropIns(t *testing.T) {
	if d, err := ExampleParams().DropIns(); err != nil || len(d) != 0 {
		t.Fatalf("default paths: drop-ins %v, %v; want none", d, err)
	}
	d, err := movedParams().DropIns()
	if err != nil || len(d) != 2 {
		t.Fatalf("moved paths: %v, %v", d, err)
	}
	svc, ver := d[0], d[1]
	if svc.Path != "/etc/systemd/system/provision.service.d/provision-paths.conf" || ver.Path != "/etc/systemd/system/provision-verify.service.d/provision-paths.conf" {
		t.Errorf("drop-in paths %q %q", svc.Path, ver.Path)
	}
	for _, l := range []string{
		"ConditionPathExists=\nConditionPathExists=!/srv/provision/done/%m\n",
		"ReadWritePaths=-/var/lib/hosts-override\n", "ReadWritePaths=/srv/provision\n", "ReadWritePaths=/srv/pki/provision\n",
		"ExecStartPre=+/bin/mkdir -p -m 0700 /srv/provision\n", "ExecStartPre=+/bin/mkdir -p -m 0700 /srv/pki/provision\n",
	} {
		if !strings.Contains(svc.Content, l) {
			t.Errorf("provision.service drop-in lacks %q:\n%s", l, svc.Content)
		}
	}
	if strings.Contains(svc.Content, "/run/provision") || strings.Contains(svc.Content, "ReadWritePaths=/etc") {
		t.Errorf("drop-in repeats a path the unit already writes:\n%s", svc.Content)
	}
	if !strings.HasSuffix(ver.Content, "[Service]\nReadWritePaths=-/srv/provision/tasks\n") {
		t.Errorf("verify drop-in:\n%s", ver.Content)
	}
	// Only the pki_dir moved: the service gets it, verify and the
	// condition need nothing.
	p := ExampleParams()
	p.PKIDir = "/srv/pki"
	if d, err := p.DropIns(); err != nil || len(d) != 1 || strings.Contains(d[0].Content, "Condition") || !strings.Contains(d[0].Content, "ReadWritePaths=/srv/pki\n") {
		t.Errorf("pki_dir only: %+v, %v", d, err)
	}
}

// TestDropInsRefuse: a path the sandbox must keep read-only or hidden is
// refused with the parameter, its value and what to do, and nothing is
// rendered.
func TestDropInsRefuse(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func(*Params)
		want string
	}{
		{"state under /usr", func(p *Params) { p.StateDir = "/usr/local/provision" }, `StateDir "/usr/local/provision"`},
		{"pki in /tmp", func(p *Params) { p.PKIDir = "/tmp/pki" }, `PKIDir "/tmp/pki"`},
		{"state in a home", func(p *Params) { p.StateDir = "/root/provision" }, `StateDir "/root/provision"`},
		{"hosts file at the root", func(p *Params) { p.HostsFile = "/hosts" }, `HostsFile "/hosts": provision must write in /, which is the filesystem root`},
		{"hosts file under /boot", func(p *Params) { p.HostsFile = "/boot/hosts" }, `HostsFile "/boot/hosts"`},
		{"token under /run/user", func(p *Params) { p.TokenFile = "/run/user/0/token" }, `TokenFile "/run/user/0/token"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := ExampleParams()
			c.set(&p)
			var b bytes.Buffer
			err := Render(&b, p)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "choose a path") {
				t.Fatalf("Render: %v; want an error containing %q", err, c.want)
			}
			if b.Len() != 0 {
				t.Errorf("Render wrote %d bytes despite the error", b.Len())
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
