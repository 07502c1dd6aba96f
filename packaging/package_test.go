package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
)

const testVersion = "1.2.3+pkgtest"

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
}

func TestDeb(t *testing.T) {
	testenv.RequireProgram(t, "go", "golang")
	dpkgDeb := testenv.RequireProgram(t, "dpkg-deb", "dpkg")
	dpkg := testenv.RequireProgram(t, "dpkg", "dpkg")

	out := t.TempDir()
	stdout, stderr, err := run(t, "..", []string{"OUT_DIR=" + out, "VERSION=" + testVersion}, "sh", "packaging/build-deb.sh")
	if err != nil {
		t.Fatalf("build-deb.sh: %v\n%s%s", err, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	deb := lines[len(lines)-1]
	if want := filepath.Join(out, "provision_"+testVersion+"_"+runtime.GOARCH+".deb"); deb != want {
		t.Fatalf("build-deb.sh printed %q, want %q", deb, want)
	}

	t.Run("control", func(t *testing.T) {
		o, e, err := run(t, ".", nil, dpkgDeb, "-f", deb, "Package", "Version", "Architecture", "Section")
		if err != nil {
			t.Fatalf("dpkg-deb -f: %v %s", err, e)
		}
		want := "Package: provision\nVersion: " + testVersion + "\nArchitecture: " + runtime.GOARCH + "\nSection: admin\n"
		if o != want {
			t.Errorf("control fields:\n%s\nwant:\n%s", o, want)
		}
		o, e, err = run(t, ".", nil, dpkgDeb, "-I", deb)
		if err != nil {
			t.Fatalf("dpkg-deb -I: %v %s", err, e)
		}
		for _, script := range []string{"preinst", "postinst", "prerm", "postrm"} {
			if strings.Contains(o, " "+script) {
				t.Errorf("package has a %s script; it must not change a machine on install:\n%s", script, o)
			}
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
			"var/lib/provision/":                       "drwx------ root/root",
			"etc/provision/":                           "drwxr-xr-x root/root",
			"usr/lib/systemd/system/provision.service": "-rw-r--r-- root/root",
		}
		for p := range shipped {
			if _, ok := want[p]; !ok {
				want[p] = "-rw-r--r-- root/root"
			}
		}
		for p, m := range want {
			if modes[p] != m {
				t.Errorf("%s: got %q, want %q", p, modes[p], m)
			}
		}
		if _, ok := modes["etc/provision/provision.toml"]; ok {
			t.Errorf("the package must not ship /etc/provision/provision.toml (per-node, written by cloud-init)")
		}
	})

	// Install into a scratch root: dpkg keeps its database under the scratch
	// admindir and unpacks under instdir; with no maintainer scripts nothing
	// is run in a chroot, so no base system is needed there.
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
	if o, e, err := run(t, ".", nil, dpkg, "--instdir="+root, "--admindir="+admin, "--force-not-root", "--log=/dev/null", "-i", deb); err != nil {
		t.Fatalf("dpkg -i into scratch root: %v\n%s%s", err, o, e)
	}
	if o, _, err := run(t, ".", nil, dpkg, "--admindir="+admin, "-s", "provision"); err != nil || !strings.Contains(o, "Status: install ok installed") || !strings.Contains(o, "Version: "+testVersion) {
		t.Fatalf("dpkg -s provision after install: %v\n%s", err, o)
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
		if !strings.Contains(o, testVersion) {
			t.Errorf("provision version printed %q, want it to contain %q", o, testVersion)
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

	// The installed units, checked by systemd against the installed binary.
	// The scratch root gets the host's targets so that default dependencies
	// (sysinit.target, ...) resolve; nothing else is copied.
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
		args := []string{"verify", "--man=no", "--root=" + root}
		for _, u := range []string{"provision.service", "provision-verify.service", "provision-verify.timer"} {
			args = append(args, filepath.Join(root, "usr/lib/systemd/system", u))
		}
		o, e, err := run(t, ".", nil, sa, args...)
		if err != nil || strings.Contains(o+e, "provision") {
			t.Fatalf("systemd-analyze verify --root on the installed units: %v\n%s%s", err, o, e)
		}
	})
}
