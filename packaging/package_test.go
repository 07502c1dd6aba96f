package packaging

import (
	"bytes"
	"compress/gzip"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/cli"
	"github.com/gpuaas/provision/internal/metrics"
	"github.com/gpuaas/provision/internal/system"
	"github.com/gpuaas/provision/internal/testenv"
)

const (
	testVersion    = "1.2.3+pkgtest"
	upgradeVersion = "1.2.4+pkgtest"
	testCommit     = "0123456789abcdef0123456789abcdef01234567"
)

func run(t *testing.T, dir string, env []string, name string, args ...string) (stdout string, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// shipped maps each installed path to the repository file it must equal
// byte for byte (the binary is checked by running it).
var shipped = map[string]string{
	"usr/lib/systemd/system/provision.service":                       "../deploy/systemd/provision.service",
	"usr/lib/systemd/system/provision-verify.service":                "../deploy/systemd/provision-verify.service",
	"usr/lib/systemd/system/provision-verify.timer":                  "../deploy/systemd/provision-verify.timer",
	"usr/share/provision/cloud-init/user-data.yaml.tmpl":             "../cloud-init/user-data.yaml.tmpl",
	"usr/share/provision/systemd/tpm.conf":                           "../deploy/systemd/tpm.conf",
	"usr/share/provision/systemd/key-group.conf":                     "../deploy/systemd/key-group.conf",
	"usr/share/provision/cloud-init/example-user-data.yaml":          "../cloud-init/example-user-data.yaml",
	"usr/share/doc/provision/provision.toml.example":                 "provision.toml.example",
	"usr/share/doc/provision/runbook.md":                             "../docs/runbook.md",
	"usr/share/doc/provision/first-boot.md":                          "../docs/first-boot.md",
	"usr/share/doc/provision/configuration.md":                       "../docs/configuration.md",
	"usr/share/doc/provision/provision.rules.yml":                    "../deploy/prometheus/provision.rules.yml",
	"usr/share/doc/provision/metrics.md":                             "../docs/metrics.md",
	"usr/share/doc/provision/logging.md":                             "../docs/logging.md",
	"usr/lib/systemd/system/provision.service.d/metrics.conf":        "../deploy/systemd/provision.service.d/metrics.conf",
	"usr/lib/systemd/system/provision-verify.service.d/metrics.conf": "../deploy/systemd/provision-verify.service.d/metrics.conf",
	"usr/lib/systemd/system/provision-renew.service":                 "../deploy/systemd/provision-renew.service",
	"usr/lib/systemd/system/provision-renew.timer":                   "../deploy/systemd/provision-renew.timer",
	"usr/lib/systemd/system/provision-renew.service.d/metrics.conf":  "../deploy/systemd/provision-renew.service.d/metrics.conf",
	"usr/share/doc/provision/copyright":                              "copyright",
	"usr/share/lintian/overrides/provision":                          "lintian-overrides",
}

// The JSON Schemas ship as they are in the repository.
func init() {
	files, _ := filepath.Glob("schemas/*.schema.json")
	if len(files) == 0 {
		panic("packaging/schemas holds no *.schema.json") // the package must ship them
	}
	for _, f := range files {
		shipped["usr/share/provision/schemas/"+filepath.Base(f)] = f
	}
}

// generated are the installed files build-deb.sh generates (man pages,
// completions, changelog); each is checked below against what it comes from.
func generated() []string {
	g := []string{
		"usr/share/doc/provision/changelog.gz",
		"usr/share/bash-completion/completions/provision",
		"usr/share/zsh/vendor-completions/_provision",
		"usr/share/man/man8/provision.8.gz",
		"usr/share/man/man5/provision.toml.5.gz",
		"usr/share/doc/provision/licenses/go/LICENSE",
	}
	for _, c := range cli.CommandNames() {
		g = append(g, "usr/share/man/man8/provision-"+c+".8.gz")
	}
	return g
}

// licenceFile matches a licence proper (not only a notice) as the
// collector (packaging/licenses) counts one.
var licenceFile = regexp.MustCompile(`(?i)^(licen[cs]e|copying|unlicense)([._-].*)?$`)

// build runs build-deb.sh for version and returns the .deb's path.
func build(t *testing.T, out, version string) string {
	t.Helper()
	stdout, stderr, err := run(t, "..", []string{"OUT_DIR=" + out, "VERSION=" + version, "COMMIT=" + testCommit, "SOURCE_DATE_EPOCH=1772323200"}, "sh", "packaging/build-deb.sh")
	if err != nil {
		t.Fatalf("build-deb.sh: %v\n%s%s", err, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	deb := lines[len(lines)-1]
	if want := filepath.Join(out, "provision_"+version+"_"+runtime.GOARCH+".deb"); deb != want {
		t.Fatalf("build-deb.sh printed %q, want %q", deb, want)
	}
	return deb
}

func gunzip(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

func TestDeb(t *testing.T) {
	testenv.RequireProgram(t, "go", "golang")
	dpkgDeb := testenv.RequireProgram(t, "dpkg-deb", "dpkg")
	dpkg := testenv.RequireProgram(t, "dpkg", "dpkg")

	out := t.TempDir()
	deb := build(t, out, testVersion)

	t.Run("control", func(t *testing.T) {
		o, e, err := run(t, ".", nil, dpkgDeb, "-f", deb, "Package", "Version", "Architecture", "Section")
		if err != nil {
			t.Fatalf("dpkg-deb -f: %v %s", err, e)
		}
		want := "Package: provision\nVersion: " + testVersion + "\nArchitecture: " + runtime.GOARCH + "\nSection: admin\n"
		if o != want {
			t.Errorf("control fields:\n%s\nwant:\n%s", o, want)
		}
		// key.store = "tpm": the units reach /dev/tpmrm0 as group tss
		// (the TPM drop-in), which tpm-udev creates with the device rule.
		// Recommended, not required: a node with file keys needs neither.
		if o, e, err := run(t, ".", nil, dpkgDeb, "-f", deb, "Recommends", "Depends"); err != nil || o != "Recommends: tpm-udev\n" {
			t.Errorf("Recommends/Depends: %q (%v %s), want Recommends: tpm-udev and no Depends", o, err, e)
		}
		// The maintainer scripts are the repository's. Only postinst
		// enables or starts anything, and only the two timers (renewal is
		// always scheduled), through deb-systemd-helper as
		// dh_installsystemd does; provision.service is cloud-init's or the
		// image's to start.
		ctrl := t.TempDir()
		if o, e, err := run(t, ".", nil, dpkgDeb, "-e", deb, ctrl); err != nil {
			t.Fatalf("dpkg-deb -e: %v %s%s", err, o, e)
		}
		if _, err := os.Stat(filepath.Join(ctrl, "preinst")); err == nil {
			t.Errorf("package has a preinst; it needs none")
		}
		starts := regexp.MustCompile(`systemctl[^\n]*\b(enable|start|restart|reenable|preset)\b|deb-systemd-helper[^\n]*\benable\b|deb-systemd-invoke[^\n]*\b(start|restart)\b`)
		for _, script := range []string{"postinst", "prerm", "postrm"} {
			got, err := os.ReadFile(filepath.Join(ctrl, script))
			if err != nil {
				t.Errorf("package has no %s: %v", script, err)
				continue
			}
			want, _ := os.ReadFile(filepath.Join("scripts", script))
			if !bytes.Equal(got, want) {
				t.Errorf("%s in the package differs from packaging/scripts/%s", script, script)
			}
			for _, line := range strings.Split(string(got), "\n") {
				if m := starts.FindString(line); m != "" && !strings.HasPrefix(strings.TrimSpace(line), "#") && (script != "postinst" || strings.Contains(line, "provision.service")) {
					t.Errorf("%s enables or starts a unit: %q", script, line)
				}
			}
		}
		post, _ := os.ReadFile(filepath.Join(ctrl, "postinst"))
		for _, want := range []string{`timers="provision-renew.timer provision-verify.timer"`, `deb-systemd-helper --quiet was-enabled "$t"`, `deb-systemd-helper enable "$t"`, `deb-systemd-helper update-state "$t"`} {
			if !strings.Contains(string(post), want) {
				t.Errorf("postinst lacks %s", want)
			}
		}
	})

	t.Run("lintian", func(t *testing.T) {
		lintian := testenv.RequireProgram(t, "lintian", "lintian")
		o, e, err := run(t, ".", nil, lintian, "--fail-on", "error,warning", "--display-info", deb)
		var bad []string
		for _, l := range strings.Split(o+e, "\n") {
			// An override that matches nothing is reported as info; it
			// would hide nothing and mislead, so it fails too.
			if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") || strings.Contains(l, "unused-override") || strings.Contains(l, "mismatched-override") {
				bad = append(bad, l)
			}
		}
		if err != nil || len(bad) > 0 {
			t.Errorf("lintian %s: %v; errors and warnings:\n%s\nfull output:\n%s%s", filepath.Base(deb), err, strings.Join(bad, "\n"), o, e)
		}
		t.Logf("lintian --fail-on error,warning --display-info: exit 0, no errors or warnings; output:\n%s", strings.TrimSpace(o))
		// Every override says why, in a comment right above it.
		b, err := os.ReadFile("lintian-overrides")
		if err != nil {
			t.Fatal(err)
		}
		prev := ""
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if !strings.HasPrefix(l, "#") && !strings.HasPrefix(prev, "#") {
				t.Errorf("lintian override %q has no reason (a comment) above it", l)
			}
			prev = l
		}
	})

	t.Run("contents", func(t *testing.T) {
		o, e, err := run(t, ".", nil, dpkgDeb, "-c", deb)
		if err != nil {
			t.Fatalf("dpkg-deb -c: %v %s", err, e)
		}
		modes := map[string]string{}
		for _, l := range strings.Split(o, "\n") {
			f := strings.Fields(l)
			if len(f) >= 6 {
				modes[strings.TrimPrefix(f[len(f)-1], "./")] = f[0] + " " + f[1]
			}
		}
		want := map[string]string{
			"usr/bin/provision":                        "-rwxr-xr-x root/root",
			"usr/lib/systemd/system/provision.service": "-rw-r--r-- root/root",
		}
		for p := range shipped {
			if _, ok := want[p]; !ok {
				want[p] = "-rw-r--r-- root/root"
			}
		}
		for _, p := range generated() {
			want[p] = "-rw-r--r-- root/root"
		}
		for p, m := range want {
			if modes[p] != m {
				t.Errorf("%s: got %q, want %q", p, modes[p], m)
			}
		}
		// The collected licence texts: world-readable documentation.
		for p, m := range modes {
			if strings.HasPrefix(p, "usr/share/doc/provision/licenses/") && !strings.HasSuffix(p, "/") && m != "-rw-r--r-- root/root" {
				t.Errorf("%s: %q, want -rw-r--r-- root/root", p, m)
			}
		}
		// provision.service's ExecStartPre= creates /var/lib/provision; the config
		// directory is the node's (cloud-init writes it).
		for _, p := range []string{"var/lib/provision/", "etc/provision/", "etc/provision/provision.toml"} {
			if _, ok := modes[p]; ok {
				t.Errorf("the package must not ship /%s", p)
			}
		}
	})

	// Install into a scratch root: dpkg keeps its database under the scratch
	// admindir and unpacks under instdir, and runs the maintainer scripts
	// without chroot (there is no base system there) with DPKG_ROOT set to
	// the scratch root, which the scripts prefix to every path they touch
	// (and which keeps them away from the machine's systemd).
	root := t.TempDir()
	admin := filepath.Join(root, "var/lib/dpkg")
	for _, d := range []string{"info", "updates", "triggers"} {
		if err := os.MkdirAll(filepath.Join(admin, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"status", "available"} {
		if err := os.WriteFile(filepath.Join(admin, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The deb-systemd-helper the scripts run is this machine's, which
	// honours DPKG_ROOT.
	dpkgIn := func(args ...string) {
		t.Helper()
		a := append([]string{"--instdir=" + root, "--admindir=" + admin, "--force-not-root", "--force-script-chrootless", "--log=/dev/null"}, args...)
		if o, e, err := run(t, ".", nil, dpkg, a...); err != nil {
			t.Fatalf("dpkg %s in the scratch root: %v\n%s%s", strings.Join(args, " "), err, o, e)
		}
	}
	dpkgIn("-i", deb)
	if o, _, err := run(t, ".", nil, dpkg, "--admindir="+admin, "-s", "provision"); err != nil || !strings.Contains(o, "Status: install ok installed") || !strings.Contains(o, "Version: "+testVersion) {
		t.Fatalf("dpkg -s provision after install: %v\n%s", err, o)
	}
	// Renewal is scheduled by the package alone: postinst enabled both
	// timers (deb-systemd-helper, honouring DPKG_ROOT), and nothing else.
	timerLinks := map[string]string{
		"etc/systemd/system/timers.target.wants/provision-renew.timer":  "/usr/lib/systemd/system/provision-renew.timer",
		"etc/systemd/system/timers.target.wants/provision-verify.timer": "/usr/lib/systemd/system/provision-verify.timer",
	}
	for l, target := range timerLinks {
		if got, err := os.Readlink(filepath.Join(root, l)); err != nil || got != target {
			t.Errorf("after install /%s -> %q (%v), want a link to %s", l, got, err, target)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(root, "etc/systemd/system/*/provision.service")); len(m) != 0 {
		t.Errorf("postinst enabled provision.service: %v", m)
	}

	t.Run("installed files", func(t *testing.T) {
		for inst, src := range shipped {
			got, err := os.ReadFile(filepath.Join(root, inst))
			if err != nil {
				t.Errorf("installed %s: %v", inst, err)
				continue
			}
			want, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("installed /%s differs from %s", inst, src)
			}
		}
	})

	bin := filepath.Join(root, "usr/bin/provision")
	// The CLI contract: `provision version` prints the version the package
	// was built with (build-deb.sh sets internal/cli.version via -ldflags)
	// and `provision --help` lists the commands; both exit 0.
	t.Run("version", func(t *testing.T) {
		o, e, err := run(t, ".", nil, bin, "version")
		if err != nil {
			t.Fatalf("%s version: %v\nstdout: %s\nstderr: %s", bin, err, o, e)
		}
		if !strings.HasPrefix(o, "provision "+testVersion+"\n") {
			t.Errorf("provision version printed %q, want it to start with provision %s", o, testVersion)
		}
		o, e, err = run(t, ".", nil, bin, "version", "--format", "json")
		var doc map[string]any
		if err != nil || json.Unmarshal([]byte(o), &doc) != nil {
			t.Fatalf("version --format json: %v\n%s%s", err, o, e)
		}
		v := map[string]string{}
		for k, x := range doc {
			v[k], _ = x.(string)
		}
		// The installed binary's documents against the installed schemas.
		schemas := testenv.LoadSchemas(t, filepath.Join(root, "usr/share/provision/schemas"))
		schemas.Validate(t, "version", "installed provision version --format json", []byte(o))
		cc, _, _ := run(t, ".", nil, bin, "config", "check", "--config", filepath.Join(root, "usr/share/doc/provision/provision.toml.example"), "--format", "json")
		schemas.Validate(t, "config-check", "installed provision config check --format json", []byte(cc))
		gomod, err := os.ReadFile("../go.mod")
		if err != nil {
			t.Fatal(err)
		}
		pin := regexp.MustCompile(`(?m)^\s*github.com/smallstep/certificates (v\S+)`).FindSubmatch(gomod)
		if v["version"] != testVersion || v["commit"] != testCommit || pin == nil || v["step_ca_client_version"] != string(pin[1]) || !strings.HasPrefix(v["go_version"], "go1.") {
			t.Errorf("version --format json = %v; want version %s, commit %s, the step-ca client go.mod pins (%s)", v, testVersion, testCommit, pin)
		}
	})
	t.Run("help", func(t *testing.T) {
		o, e, err := run(t, ".", nil, bin, "--help")
		if err != nil {
			t.Fatalf("%s --help: %v\nstdout: %s\nstderr: %s", bin, err, o, e)
		}
		for _, cmd := range []string{"bootstrap", "verify", "hosts", "version"} {
			if !strings.Contains(o+e, cmd) {
				t.Errorf("provision --help does not mention %q:\n%s%s", cmd, o, e)
			}
		}
	})
	// The installed man pages against the installed binary's --help: built
	// from the same help text, so every line of it is in the page.
	t.Run("man pages match --help", func(t *testing.T) {
		for _, c := range append([]string{""}, cli.CommandNames()...) {
			page, args := "provision.8.gz", []string{"--help"}
			if c != "" {
				page, args = "provision-"+c+".8.gz", []string{c, "--help"}
			}
			help, e, err := run(t, ".", nil, bin, args...)
			if err != nil {
				t.Fatalf("provision %v: %v %s", args, err, e)
			}
			man := testenv.RenderMan(t, gunzip(t, filepath.Join(root, "usr/share/man/man8", page)))
			if missing := testenv.MissingHelpLines(man, help); len(missing) > 0 {
				t.Errorf("installed %s lacks lines of 'provision %s':\n%s", page, strings.Join(args, " "), strings.Join(missing, "\n"))
			}
		}
	})
	// The packaged binary is the lean one: built by build-deb.sh with every
	// tag of cmd/provision/build-tags, no step-ca database linked.
	t.Run("lean build", func(t *testing.T) {
		bi, err := buildinfo.ReadFile(bin)
		tags, terr := testenv.NodeTags()
		if err != nil || terr != nil {
			t.Fatal(err, terr)
		}
		for _, p := range testenv.LeanProblems(bi, tags) {
			t.Error("the packaged binary " + p)
		}
	})
	// Every module the installed binary links has its licence text in the
	// package, under its module path: the binary's own record decides.
	t.Run("licences of the linked modules", func(t *testing.T) {
		bi, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if len(bi.Deps) < 10 {
			t.Fatalf("the installed binary records %d modules; the build info is not what it should be", len(bi.Deps))
		}
		for _, d := range append([]*debug.Module{{Path: "go"}}, bi.Deps...) {
			if strings.HasPrefix(d.Path, bi.Main.Path+"/") {
				continue // this repository's own (packaging/copyright)
			}
			ents, _ := os.ReadDir(filepath.Join(root, "usr/share/doc/provision/licenses", d.Path))
			if !slices.ContainsFunc(ents, func(e fs.DirEntry) bool { return licenceFile.MatchString(e.Name()) }) {
				t.Errorf("the linked module %s %s has no licence text in /usr/share/doc/provision/licenses/%s/", d.Path, d.Version, d.Path)
			}
		}
		// The config's man page is installed beside the commands'.
		cfg := string(gunzip(t, filepath.Join(root, "usr/share/man/man5/provision.toml.5.gz")))
		if !strings.Contains(cfg, ".TH PROVISION.TOML 5 ") || !strings.Contains(cfg, "node_api.wait_timeout") {
			t.Errorf("installed provision.toml.5 is not the config page:\n%s", cfg)
		}
	})
	t.Run("generated files", func(t *testing.T) {
		if b, err := os.ReadFile(filepath.Join(root, "usr/share/bash-completion/completions/provision")); err != nil || !bytes.Equal(b, cli.BashCompletion()) {
			t.Errorf("installed bash completion is not the generated one (%v)", err)
		}
		if b, err := os.ReadFile(filepath.Join(root, "usr/share/zsh/vendor-completions/_provision")); err != nil || !bytes.Equal(b, cli.ZshCompletion()) {
			t.Errorf("installed zsh completion is not the generated one (%v)", err)
		}
		cl := string(gunzip(t, filepath.Join(root, "usr/share/doc/provision/changelog.gz")))
		if !strings.HasPrefix(cl, "provision ("+testVersion+") ") || !strings.Contains(cl, testCommit) || !strings.Contains(cl, "Sun, 01 Mar 2026 00:00:00 +0000") {
			t.Errorf("changelog:\n%s", cl)
		}
	})

	// The installed units, checked by systemd against the installed binary.
	// The scratch root gets the host's targets so that default dependencies
	// (sysinit.target, ...) resolve, and its /bin/mkdir (provision.service's
	// ExecStartPre=, which systemd-analyze requires to exist), removed
	// again after; nothing else is copied.
	t.Run("systemd-analyze installed units", func(t *testing.T) {
		sa := testenv.RequireProgram(t, "systemd-analyze", "systemd")
		targets, _ := filepath.Glob("/lib/systemd/system/*.target")
		if more, _ := filepath.Glob("/usr/lib/systemd/system/*.target"); len(more) > len(targets) {
			targets = more
		}
		if len(targets) == 0 {
			t.Fatal("no systemd targets found on this machine")
		}
		etc := filepath.Join(root, "etc/systemd/system")
		if err := os.MkdirAll(etc, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, tg := range targets {
			b, err := os.ReadFile(tg)
			if err != nil {
				continue // dangling alias symlinks
			}
			if err := os.WriteFile(filepath.Join(etc, filepath.Base(tg)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		mkdir, err := os.ReadFile("/bin/mkdir")
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(root, "bin"), 0o755)
		if err := os.WriteFile(filepath.Join(root, "bin/mkdir"), mkdir, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(filepath.Join(root, "bin"))
		args := []string{"verify", "--man=no", "--root=" + root}
		for _, u := range []string{"provision.service", "provision-verify.service", "provision-verify.timer", "provision-renew.service", "provision-renew.timer"} {
			args = append(args, filepath.Join(root, "usr/lib/systemd/system", u))
		}
		o, e, err := run(t, ".", nil, sa, args...)
		if err != nil || strings.Contains(o+e, "provision") {
			t.Fatalf("systemd-analyze verify --root on the installed units: %v\n%s%s", err, o, e)
		}
	})
	// A node that has bootstrapped: what provision wrote (state, PKI, the
	// token it did not get to delete), what cloud-init wrote (the config)
	// and the links `systemctl enable` made in the image.
	state := map[string]string{
		"var/lib/provision/pki/gen-1/key.pem":                   "PRIVATE KEY",
		"var/lib/provision/pki/gen-1/cert.pem":                  "CERT",
		"var/lib/provision/receipt.json":                        "{}",
		"var/lib/provision/done/0123456789abcdef":               "",
		"run/provision/token":                                   "eyJ.token",
		"var/lib/provision/.provision-dir":                      "provision created this directory\n",
		"var/lib/provision/pki/.provision-dir":                  "provision created this directory\n",
		"var/lib/provision/renew.json.damaged-20260101T000000Z": "{",
	}
	config := map[string]string{
		"etc/provision/provision.toml":                         "node_id = \"gpu-0042\"\n",
		"etc/systemd/system/provision.service.d/paths.conf":    "[Service]\n",
		"etc/systemd/system/provision-verify.service.d/x.conf": "[Service]\n",
	}
	links := map[string]string{
		"etc/systemd/system/multi-user.target.wants/provision.service": "/usr/lib/systemd/system/provision.service",
	}
	for _, m := range []map[string]string{state, config} {
		for p, text := range m {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, p), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	for p, target := range links {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(p string) bool {
		_, err := os.Lstat(filepath.Join(root, p))
		return err == nil
	}
	status := func() string {
		o, _, _ := run(t, ".", nil, dpkg, "--admindir="+admin, "-s", "provision")
		return o
	}

	// The operator turns the verify timer off (systemctl disable): the
	// upgrade keeps that choice, and keeps the renew timer enabled.
	if o, e, err := run(t, ".", nil, "systemctl", "--root="+root, "disable", "provision-verify.timer"); err != nil {
		t.Fatalf("systemctl --root disable provision-verify.timer: %v\n%s%s", err, o, e)
	}
	// Upgrade: the new binary is in place, the node's state untouched.
	deb2 := build(t, out, upgradeVersion)
	dpkgIn("-i", deb2)
	if o, _, err := run(t, ".", nil, bin, "version"); err != nil || !strings.HasPrefix(o, "provision "+upgradeVersion+"\n") {
		t.Errorf("after the upgrade provision version = %q (%v), want %s", o, err, upgradeVersion)
	}
	for p := range state {
		if !exists(p) {
			t.Errorf("the upgrade removed /%s", p)
		}
	}
	if exists("etc/systemd/system/timers.target.wants/provision-verify.timer") {
		t.Errorf("the upgrade enabled provision-verify.timer again, which the operator had disabled")
	}
	if !exists("etc/systemd/system/timers.target.wants/provision-renew.timer") {
		t.Errorf("the upgrade disabled provision-renew.timer")
	}
	own := plantOwnFiles(t, root)

	// Remove: the package's files go, the keys and state stay.
	dpkgIn("-r", "provision")
	if st := status(); !strings.Contains(st, "Status: deinstall ok config-files") {
		t.Errorf("dpkg -s after remove:\n%s", st)
	}
	for _, p := range append([]string{"usr/bin/provision", "usr/lib/systemd/system/provision.service", "usr/share/man/man8/provision.8.gz", "usr/share/doc/provision/licenses"}, generated()...) {
		if exists(p) {
			t.Errorf("/%s is still there after dpkg -r", p)
		}
	}
	for _, m := range []map[string]string{state, config, links} {
		for p := range m {
			if !exists(p) {
				t.Errorf("dpkg -r removed /%s; remove must keep the node's keys, state and config", p)
			}
		}
	}
	for _, p := range own {
		if !exists(p) {
			t.Errorf("dpkg -r removed /%s; remove must keep the node's state", p)
		}
	}

	// Purge: provision's state, PKI, token and enablement links go; the
	// config cloud-init wrote stays. Nothing else of the package remains.
	dpkgIn("-P", "provision")
	if st := status(); strings.Contains(st, "Status:") && !strings.Contains(st, "not-installed") {
		t.Errorf("dpkg -s after purge:\n%s", st)
	}
	for _, m := range []map[string]string{state, links, timerLinks} {
		for p := range m {
			if exists(p) {
				t.Errorf("/%s is still there after dpkg -P", p)
			}
		}
	}
	for _, p := range own {
		if exists(p) {
			t.Errorf("/%s, a file provision writes, is still there after dpkg -P", p)
		}
	}
	for _, p := range []string{"var/lib/provision", "run/provision"} {
		if exists(p) {
			t.Errorf("/%s is still there after dpkg -P", p)
		}
	}
	for p := range config {
		if !exists(p) {
			t.Errorf("dpkg -P removed /%s, which cloud-init or the operator wrote", p)
		}
	}
	var left []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(root, path)
		switch {
		case err != nil || rel == "." || d.IsDir():
		case strings.HasPrefix(rel, "var/lib/dpkg/"), config[rel] != "":
		case strings.HasPrefix(rel, "etc/systemd/system/") && strings.HasSuffix(rel, ".target"): // copied for systemd-analyze
		default:
			left = append(left, rel)
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("after dpkg -P these files remain in the root:\n%s", strings.Join(left, "\n"))
	}

	t.Run("purge with a symlinked state_dir", func(t *testing.T) { purgeSymlinked(t, root, deb, dpkgIn) })
}

// plantOwnFiles writes, at the default paths under root, every name
// provision writes, from the one table ClaimDir judges by
// (system.OwnLayout) and the metrics each command writes: what a node that
// ran every command, crashed in every write and handed off tasks would
// have. It returns the planted paths (relative to root). The postrm's own
// list is checked against the same table, so a name added to provision and
// not to the purge fails here.
func plantOwnFiles(t *testing.T, root string) []string {
	t.Helper()
	l := system.OwnLayout()
	state, pki := "var/lib/provision", "var/lib/provision/pki"
	files := map[string]string{}
	for _, f := range l.Files {
		files[state+"/"+f] = "{}"
		files[state+"/."+f+"4242"] = "{" // a killed write's temp file
	}
	for _, d := range l.Dirs {
		files[state+"/"+d+"/entry-1"] = "{}"
	}
	files[state+"/"+l.TempPrefix+"x"] = ""
	files[state+"/"+l.Mark] = "mark"
	files[pki+"/"+l.Mark] = "mark"
	gen := l.GenPrefix + "20260301T000000.000000000Z-0a0b0c0d"
	for _, c := range l.Creds {
		files[pki+"/"+gen+"/"+c] = c
		files[pki+"/."+c+"99"] = "" // renameio's temp link, as a file
	}
	files[pki+"/"+l.TempPrefix+gen+"/key.pem"] = "k"
	for _, c := range cli.MetricsCommands() {
		name, err := metrics.FileName(c)
		if err != nil {
			t.Fatal(err)
		}
		files["var/lib/prometheus/node-exporter/"+name] = "x"
		files["var/lib/prometheus/node-exporter/."+name+"77"] = "x"
	}
	var out []string
	for p, text := range files {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o700)
		if err := os.WriteFile(full, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	for _, lk := range l.Links {
		os.Remove(filepath.Join(root, pki, lk))
		if err := os.Symlink(gen, filepath.Join(root, pki, lk)); err != nil {
			t.Fatal(err)
		}
		out = append(out, pki+"/"+lk)
	}
	for _, c := range l.Creds {
		os.Remove(filepath.Join(root, pki, c))
		if err := os.Symlink("current/"+c, filepath.Join(root, pki, c)); err != nil {
			t.Fatal(err)
		}
		out = append(out, pki+"/"+c)
	}
	return out
}

// TestPostrmListsEveryOwnName: the purge's list of provision's own names
// is the table ClaimDir judges by (system.OwnLayout), so a record added to
// provision (last-failure.json was one, issue 30) cannot be left behind by
// dpkg -P; and it purges each command's metrics.
func TestPostrmListsEveryOwnName(t *testing.T) {
	b, err := os.ReadFile("scripts/postrm")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^own_files="([^"]*)"$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("scripts/postrm has no own_files= line")
	}
	l := system.OwnLayout()
	want := append(append(append([]string{l.Mark}, l.Files...), l.Creds...), l.Links...)
	got := strings.Fields(string(m[1]))
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("postrm's own_files = %v\nthe table (system.OwnLayout) = %v", got, want)
	}
	for _, d := range l.Dirs {
		if !strings.Contains(string(b), `"$dir/`+d+`"`) {
			t.Errorf("postrm does not remove state_dir/%s/", d)
		}
	}
	for _, p := range []string{`"$dir"/` + l.GenPrefix + `*`, `"$dir"/` + l.TempPrefix + `*`} {
		if !strings.Contains(string(b), p) {
			t.Errorf("postrm does not remove %s", p)
		}
	}
	if want := "for cmd in " + strings.Join(cli.MetricsCommands(), " ") + "; do"; !strings.Contains(string(b), want) {
		t.Errorf("postrm does not purge the metrics of exactly %v (want %q)", cli.MetricsCommands(), want)
	}
}

// purgeSymlinked is issue 24 item 7a: with /var/lib/provision a symbolic
// link to another volume (a documented layout), purge removed only the link
// and left key.pem on the volume; and it left provision_*.prom behind, so
// the fleet's alerts kept firing for a node that no longer runs provision.
// Purge now removes provision's own files at the link's target (and at a
// pki link's), keeps everything else there, and removes provision's
// metrics from the default textfile directory and from the config's.
func purgeSymlinked(t *testing.T, root, deb string, dpkgIn func(args ...string)) {
	dpkgIn("-i", deb)
	write := func(files map[string]string) {
		for p, text := range files {
			full := filepath.Join(root, p)
			if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(full, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	link := func(target, at string) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, at)), 0o755)
		if err := os.Symlink(target, filepath.Join(root, at)); err != nil {
			t.Fatal(err)
		}
	}
	// provision's files on two volumes: state on /srv/state, the PKI on
	// /srv/keys (state_dir/pki is itself a link), and the metrics.
	own := map[string]string{
		"srv/state/receipt.json": "{}", "srv/state/renew.json": "{}", "srv/state/.lock": "", "srv/state/done/0123456789abcdef": "",
		"srv/state/tasks/t-1.json": "{}", "srv/state/.receipt.json123": "{", "srv/state/.provision-dir": "mark",
		"srv/state/receipt.json.damaged-20260101T000000Z": "{", "srv/keys/.provision-dir": "mark",
		"srv/keys/gen-1/key.pem": "PRIVATE KEY", "srv/keys/gen-1/cert.pem": "CERT", "srv/keys/gen-1/ca.pem": "CA",
		"var/lib/prometheus/node-exporter/provision_bootstrap.prom": "x", "var/lib/prometheus/node-exporter/provision_verify.prom": "x",
		"var/lib/prometheus/node-exporter/.provision_renew.prom4242": "x", "srv/metrics/provision_renew.prom": "x",
	}
	others := map[string]string{
		"srv/state/lost+found/inode": "fsck", "srv/keys/README": "the keys volume", "srv/keys/other-service.pem": "not provision's",
		"var/lib/prometheus/node-exporter/node_disk.prom": "node_exporter's", "srv/metrics/gpu.prom": "dcgm's",
		"etc/provision/provision.toml": "node_id = \"gpu-0042\"\n\n[metrics] # moved\ntextfile_dir = \"/srv/metrics\"\n",
	}
	write(own)
	write(others)
	link("gen-1", "srv/keys/current")
	link("current/key.pem", "srv/keys/key.pem")
	os.RemoveAll(filepath.Join(root, "var/lib/provision"))
	link("/srv/state", "var/lib/provision")
	link("/srv/keys", "srv/state/pki")

	dpkgIn("-P", "provision")
	for p := range own {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("/%s is still there after dpkg -P", p)
		}
	}
	for _, p := range []string{"var/lib/provision", "srv/state/pki", "srv/keys/current", "srv/keys/key.pem", "srv/keys/gen-1"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("/%s is still there after dpkg -P", p)
		}
	}
	for p, text := range others {
		if b, err := os.ReadFile(filepath.Join(root, p)); err != nil || string(b) != text {
			t.Errorf("dpkg -P removed or changed /%s, which is not provision's (%v)", p, err)
		}
	}
	for _, d := range []string{"srv/state", "srv/keys", "srv/metrics"} {
		if st, err := os.Lstat(filepath.Join(root, d)); err != nil || !st.IsDir() {
			t.Errorf("dpkg -P removed the volume directory /%s (%v)", d, err)
		}
	}
}

// TestVersionsSort is issue 30's fifth finding: untagged builds were
// versioned 0.0.0+git.<hash>, which sorts by the hash, so apt took a newer
// build for a downgrade (0.0.0+git.a5c35ca is not greater than
// 0.0.0+git.d6a527c). In a repository of its own, two consecutive commits
// (one second apart, their hashes in either order), then a release tag and
// a commit after it: packaging/version.sh's versions must each sort above
// the one before under the real dpkg --compare-versions. The repository's
// own last two commits are checked too, when the clone has them.
func TestVersionsSort(t *testing.T) {
	dpkg := testenv.RequireProgram(t, "dpkg", "dpkg")
	gitBin := testenv.RequireProgram(t, "git", "git")
	script, err := filepath.Abs("version.sh")
	if err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	git := func(date string, args ...string) string {
		t.Helper()
		env := []string{"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid",
			"GIT_AUTHOR_DATE=" + date, "GIT_COMMITTER_DATE=" + date, "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1"}
		o, e, err := run(t, repo, env, gitBin, args...)
		if err != nil {
			t.Fatalf("git %v: %v\n%s%s", args, err, o, e)
		}
		return strings.TrimSpace(o)
	}
	version := func(dir string, rev ...string) string {
		t.Helper()
		o, e, err := run(t, dir, []string{"TZ=Asia/Tokyo"}, "sh", append([]string{script}, rev...)...)
		if err != nil {
			t.Fatalf("version.sh %v: %v\n%s", rev, err, e)
		}
		return strings.TrimSpace(o)
	}
	gt := func(a, b string) bool {
		_, _, err := run(t, ".", nil, dpkg, "--compare-versions", a, "gt", b)
		return err == nil
	}
	git("2026-12-06T07:06:04Z", "init", "-q", "-b", "main")
	var seq []string
	for i, date := range []string{"2026-12-06T07:06:04Z", "2026-12-06T07:06:05Z", "2026-12-06T07:06:05Z"} {
		os.WriteFile(filepath.Join(repo, "f"), []byte(fmt.Sprint(i)), 0o644)
		git(date, "add", "f")
		git(date, "commit", "-q", "-m", fmt.Sprint("commit ", i))
		seq = append(seq, version(repo))
	}
	if !regexp.MustCompile(`^0\.0\.0\+git20261206070604\.1\.[0-9a-f]{7}$`).MatchString(seq[0]) {
		t.Errorf("an untagged build is %q, want 0.0.0+git<UTC commit time>.<commits>.<hash>", seq[0])
	}
	git("2026-12-06T08:00:00Z", "tag", "v1.0.0")
	seq = append(seq, version(repo))
	os.WriteFile(filepath.Join(repo, "f"), []byte("after the tag"), 0o644)
	git("2026-12-06T08:00:01Z", "commit", "-q", "-am", "after the tag")
	seq = append(seq, version(repo))
	os.WriteFile(filepath.Join(repo, "f"), []byte("uncommitted"), 0o644)
	seq = append(seq, version(repo))
	for i := 1; i < len(seq); i++ {
		if !gt(seq[i], seq[i-1]) {
			t.Errorf("dpkg --compare-versions %s gt %s is false: the later build sorts lower", seq[i], seq[i-1])
		}
	}
	if seq[3] != "1.0.0" || !strings.HasPrefix(seq[4], "1.0.0+1.g") || !strings.HasSuffix(seq[5], ".dirty") {
		t.Errorf("tagged versions %q, want 1.0.0, 1.0.0+1.g<hash>, then .dirty", seq[3:])
	}
	t.Logf("versions in order: %s", strings.Join(seq, " < "))
	// This repository's own last two commits.
	if _, _, err := run(t, "..", nil, gitBin, "rev-parse", "--verify", "-q", "HEAD~1"); err == nil {
		prev, head := version("..", "HEAD~1"), version("..", "HEAD")
		if !gt(head, prev) {
			t.Errorf("this repository: HEAD is %s, HEAD~1 %s: HEAD does not sort higher", head, prev)
		}
		t.Logf("this repository: HEAD~1 %s < HEAD %s", prev, head)
	}
}
