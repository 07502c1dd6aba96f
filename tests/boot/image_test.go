package boot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
)

// baseSuite and basePackages are the minimal root: Debian's minbase plus
// what a cloud image adds for first boot (systemd as PID 1, D-Bus for
// systemctl, cloud-init and its CA bundle). Changing either changes the
// cache key.
const baseSuite = "bookworm"

var basePackages = []string{"systemd", "systemd-sysv", "dbus", "cloud-init", "ca-certificates"}

// baseRecipe is what the cached root is keyed by: the command that builds
// it, and the version of what the suite adds on top (imageVersion).
func baseRecipe() string {
	return fmt.Sprintf("mmdebstrap --variant=minbase --include=%s %s; image %d", strings.Join(basePackages, ","), baseSuite, imageVersion)
}

// imageVersion changes when prepareImage below changes what a cached root
// must not keep.
const imageVersion = 1

// CacheDir is where built roots are kept between runs: the README and
// docs/first-boot.md name it.
func CacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "provision-tests")
	}
	return "/var/cache/provision-tests"
}

// programs are what the suite runs on this machine, with the Debian
// package that provides each (.ci/run installs them).
var programs = []struct{ name, pkg string }{
	{"systemd-nspawn", "systemd-container"}, {"mmdebstrap", "mmdebstrap"}, {"nsenter", "util-linux"},
	{"journalctl", "systemd"}, {"systemctl", "systemd"}, {"dpkg", "dpkg"}, {"promtool", "prometheus"},
}

// require applies the skip-or-fail rule to what every boot test needs:
// root (nspawn and mmdebstrap's root mode) and the programs above.
func require(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "!!! NOT ROOT: booting a node with systemd-nspawn needs root (sudo go test ./tests/boot) !!!")
	}
	for _, p := range programs {
		testenv.RequireProgram(t, p.name, p.pkg)
	}
}

// artifacts are built once per test binary: the base root, the .deb and
// the stand-in node-agent; the next version's .deb only for the test that
// upgrades to it.
var artifacts struct {
	once             sync.Once
	base, deb, agent string
	err              error
	nextOnce         sync.Once
	next             string
	nextErr          error
}

// debVersion and nextVersion are the package versions the suite builds:
// every node gets the first; TestBootPackage upgrades to the second.
const (
	debVersion  = "1.0.0+boottest"
	nextVersion = "1.0.1+boottest"
)

// image returns the cached base root and the freshly built .deb, building
// what is missing on the first call.
func image(t *testing.T) (base, deb string) {
	t.Helper()
	artifacts.once.Do(func() {
		start := time.Now()
		if artifacts.base, artifacts.err = baseRoot(); artifacts.err != nil {
			return
		}
		t.Logf("boot: base root %s ready in %s", artifacts.base, time.Since(start).Round(time.Second))
		start = time.Now()
		if artifacts.deb, artifacts.err = buildDeb(debVersion); artifacts.err != nil {
			return
		}
		t.Logf("boot: package %s built in %s", filepath.Base(artifacts.deb), time.Since(start).Round(time.Second))
		start = time.Now()
		artifacts.agent, artifacts.err = buildAgent()
		t.Logf("boot: stand-in node-agent built in %s", time.Since(start).Round(time.Second))
	})
	if artifacts.err != nil {
		t.Fatalf("boot: %v", artifacts.err)
	}
	return artifacts.base, artifacts.deb
}

// baseRoot returns the cached root for baseRecipe, building it when it is
// not there: into a temporary directory next to it, renamed into place
// only once complete, so an interrupted build never leaves a root that
// looks usable.
func baseRoot() (string, error) {
	sum := sha256.Sum256([]byte(baseRecipe()))
	dir := filepath.Join(CacheDir(), "boot-root-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(filepath.Join(dir, "etc", "os-release")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return "", fmt.Errorf("cache directory: %w", err)
	}
	tmp, err := os.MkdirTemp(CacheDir(), ".building-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	build := filepath.Join(tmp, "root")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mmdebstrap", "--variant=minbase", "--include="+strings.Join(basePackages, ","), baseSuite, build)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("mmdebstrap (%s): %v\n%s", baseRecipe(), err, tail(string(out), 40))
	}
	if err := prepareImage(build); err != nil {
		return "", err
	}
	if err := os.Rename(build, dir); err != nil {
		if _, statErr := os.Stat(filepath.Join(dir, "etc", "os-release")); statErr == nil {
			return dir, nil // another run finished first
		}
		return "", err
	}
	return dir, nil
}

// prepareImage makes the built root what an image builder ships, and what
// a test container needs; none of it is provision's:
//   - /etc/hosts as Debian's netbase writes it (minbase has none; provision
//     would then create one with only its block), plus a line of the
//     node's own that must survive;
//   - cloud-init's locale set to C.UTF-8 (its locale module runs
//     update-locale to en_US.UTF-8, which minbase cannot generate, and
//     fails cloud-config.service);
//   - cloud-init's network configuration off: the container shares this
//     machine's network namespace, and its fallback config names this
//     machine's interface;
//   - an empty machine-id, so each copy gets its own at first boot.
func prepareImage(root string) error {
	files := map[string]string{
		"etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
			"# a line of the image's own, which provision must keep\n10.1.2.3\tbuild-cache.example.internal\n",
		"etc/cloud/cloud.cfg.d/90-boot-test.cfg": "# tests/boot: see prepareImage.\nlocale: C.UTF-8\nnetwork: {config: disabled}\n",
		"etc/machine-id":                         "",
	}
	for p, content := range files {
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o644); err != nil {
			return fmt.Errorf("preparing the image: %w", err)
		}
	}
	return nil
}

// nextDeb is the package of the next version, for an upgrade: the same
// source built again by build-deb.sh with its version raised.
func nextDeb(t *testing.T) string {
	t.Helper()
	image(t)
	artifacts.nextOnce.Do(func() {
		start := time.Now()
		artifacts.next, artifacts.nextErr = buildDeb(nextVersion)
		t.Logf("boot: package %s built in %s", filepath.Base(artifacts.next), time.Since(start).Round(time.Second))
	})
	if artifacts.nextErr != nil {
		t.Fatalf("boot: %v", artifacts.nextErr)
	}
	return artifacts.next
}

// buildAgent builds the stand-in node-agent (tests/boot/agent), static, to
// run inside a node.
func buildAgent() (string, error) {
	mod, err := testenv.ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(workDir, "node-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./tests/boot/agent")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the stand-in node-agent: %v\n%s", err, b)
	}
	return out, nil
}

// buildDeb builds the project's package with packaging/build-deb.sh, as
// packaging/package_test.go does, into a directory removed when the test
// binary ends (TestMain).
func buildDeb(version string) (string, error) {
	mod, err := testenv.ModuleRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("sh", "packaging/build-deb.sh")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "OUT_DIR="+workDir, "VERSION="+version, "SOURCE_DATE_EPOCH=1772323200")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("packaging/build-deb.sh: %v\n%s", err, tail(stderr.String(), 40))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// workDir holds what the test binary builds (the .deb); TestMain makes and
// removes it.
var workDir string

// node is one node's root, copied from the base root, with the package
// installed and the timers the image enables.
type node struct {
	t    *testing.T
	id   string
	root string // host path of the node's /
}

// newNode copies the base root for id and installs the .deb the way an
// image build does: dpkg -i run in the root (chroot), its maintainer
// scripts with it, and nothing else. No unit is enabled by the test: the
// package's postinst enables the timers itself (docs/first-boot.md), which
// TestBootFirstBoot checks under the booted systemd.
func newNode(t *testing.T, id string) *node {
	t.Helper()
	_, deb := image(t)
	n := bareNode(t, id)
	n.chroot("dpkg", "-i", n.put(deb, "/var/cache/provision-test/"+filepath.Base(deb)))
	return n
}

// bareNode is a copy of the base root for id without the package.
func bareNode(t *testing.T, id string) *node {
	t.Helper()
	base, _ := image(t)
	n := &node{t: t, id: id, root: filepath.Join(t.TempDir(), id)}
	n.run("cp", "-a", base, n.root)
	return n
}

// put copies a file of this machine into the node at p (0644) and returns
// p.
func (n *node) put(src, p string) string {
	n.t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		n.t.Fatal(err)
	}
	n.write(p, string(b), 0o644)
	return p
}

// chroot runs a command in the node's root, as an image build does (no
// systemd running there: the maintainer scripts see no /run/systemd/system).
func (n *node) chroot(args ...string) string {
	n.t.Helper()
	return n.run("chroot", append([]string{n.root}, args...)...)
}

// agentUnit runs the stand-in node-agent as its own user, a member of
// paths.key_group's group, the way a node-agent's package would; its
// reload is the SIGHUP renew.post_hook asks for (systemctl reload).
const agentUnit = `[Unit]
Description=stand-in node-agent (tests/boot): reads the key as user agent through paths.key_group, polls tasks/wait
After=network-online.target

[Service]
User=agent
Group=agent
ExecStart=/usr/local/bin/node-agent -url %s
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=2s

[Install]
WantedBy=multi-user.target
`

// addAgent adds, as an image build would, the node-agent's user (agent,
// in group keyGroup) and its enabled unit, polling waitURL.
func (n *node) addAgent(keyGroup, waitURL string) {
	n.t.Helper()
	_, _ = image(n.t)
	n.chroot("groupadd", "--system", keyGroup)
	n.chroot("useradd", "--system", "--user-group", "--groups", keyGroup, "--no-create-home", "--shell", "/usr/sbin/nologin", "agent")
	n.put(artifacts.agent, "/usr/local/bin/node-agent")
	os.Chmod(n.path("/usr/local/bin/node-agent"), 0o755)
	n.write("/etc/systemd/system/node-agent.service", fmt.Sprintf(agentUnit, waitURL), 0o644)
	n.run("systemctl", "--root="+n.root, "enable", "node-agent.service")
}

// run runs a command on this machine for the node's preparation.
func (n *node) run(name string, args ...string) string {
	n.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// path is the host path of a node path.
func (n *node) path(p string) string {
	return filepath.Join(n.root, strings.TrimPrefix(p, "/"))
}

// write writes a node file (and its directory).
func (n *node) write(p, content string, mode os.FileMode) {
	n.t.Helper()
	if err := os.MkdirAll(filepath.Dir(n.path(p)), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(n.path(p), []byte(content), mode); err != nil {
		n.t.Fatal(err)
	}
}

// read reads a node file; "" when it does not exist.
func (n *node) read(p string) string {
	n.t.Helper()
	b, err := os.ReadFile(n.path(p))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		n.t.Fatal(err)
	}
	return string(b)
}

// exists reports whether a node path exists.
func (n *node) exists(p string) bool {
	_, err := os.Lstat(n.path(p))
	return err == nil
}

// seed lays the NoCloud seed: the user-data `provision userdata` renders
// from cfgFile and tokenFile (the package's own binary, run here as an
// operator would on the machine that provisions the rack), and meta-data
// naming the instance. Without a seed, ds-identify turns cloud-init off.
func (n *node) seed(cfgFile, tokenFile string) string {
	n.t.Helper()
	ud := n.path("/var/lib/cloud/seed/nocloud/user-data")
	if err := os.MkdirAll(filepath.Dir(ud), 0o755); err != nil {
		n.t.Fatal(err)
	}
	n.run(n.path("/usr/bin/provision"), "userdata", "--config", cfgFile, "--token-file", tokenFile, "--out", ud)
	n.write("/var/lib/cloud/seed/nocloud/meta-data", "instance-id: iid-"+n.id+"\nlocal-hostname: "+n.id+"\n", 0o644)
	return n.read("/var/lib/cloud/seed/nocloud/user-data")
}

// dropIn writes a drop-in of the test's own for unit. Only the timers'
// periods are shortened this way (fastTimers); the shipped units stay as
// they are.
func (n *node) dropIn(unit, content string) {
	n.write("/etc/systemd/system/"+unit+".d/boot-test.conf", "# tests/boot: shortened for the test.\n"+content, 0o644)
}

// fastTimers makes provision-verify.timer and provision-renew.timer fire
// every few seconds instead of hourly and every 15 minutes: their periods
// scaled down, the fleet's random delay kept (a few seconds, not zero) and
// systemd's coalescing window (AccuracySec=, a minute by default) cut to
// a second. Nothing else of the units changes.
func (n *node) fastTimers(verifyEvery, renewEvery string) {
	for unit, every := range map[string]string{"provision-verify.timer": verifyEvery, "provision-renew.timer": renewEvery} {
		n.dropIn(unit, "[Timer]\nOnBootSec=\nOnUnitActiveSec=\nOnBootSec="+every+"\nOnUnitActiveSec="+every+"\nRandomizedDelaySec=3s\nAccuracySec=1s\n")
	}
}

// machineID is the node's /etc/machine-id, committed at its first boot.
func (n *node) machineID() string {
	return strings.TrimSpace(n.read("/etc/machine-id"))
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
