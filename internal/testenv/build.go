package testenv

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// ModuleRoot walks up from the working directory (a package directory under
// go test) to the directory holding go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// GoTool is the go command: from PATH, else the toolchain's default place
// (a CI job may call /usr/local/go/bin/go without it on PATH).
func GoTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// TagsFile is the one list of the provision binary's build tags, relative
// to the module root; packaging/build-deb.sh reads the same file.
const TagsFile = "cmd/provision/build-tags"

// NodeTags are the build tags of every provision binary (TagsFile: one per
// line, '#' starts a comment), in the file's order.
func NodeTags() ([]string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(root, TagsFile))
	if err != nil {
		return nil, err
	}
	return ParseTags(string(b)), nil
}

// ParseTags reads a TagsFile's text: one tag per line, blank lines and
// everything after '#' ignored.
func ParseTags(text string) []string {
	var tags []string
	for _, line := range strings.Split(text, "\n") {
		line, _, _ = strings.Cut(line, "#")
		tags = append(tags, strings.Fields(line)...)
	}
	return tags
}

// BuildProvision builds ./cmd/provision into dir and returns the binary's
// path. The suites that run the real binary build it once in TestMain. When
// the tests run with -race, so does the binary: the product's goroutines run
// there. The binary gets NodeTags, as shipped; tags are extra build tags
// (the crash tests use "crashpoints").
func BuildProvision(dir string, tags ...string) (string, error) {
	node, err := NodeTags()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "provision")
	var args []string
	if RaceEnabled {
		args = append(args, "-race")
	}
	return bin, goBuild(bin, "./cmd/provision", args, nil, append(node, tags...))
}

// BuildShipped builds ./cmd/provision into bin the way packaging/build-deb.sh
// does (BuildStatic with NodeTags), for the bench and the storm.
func BuildShipped(bin string) error {
	tags, err := NodeTags()
	if err != nil {
		return err
	}
	return BuildStatic(bin, "./cmd/provision", tags)
}

// BuildStatic builds pkg (relative to the module root) into bin with the
// shipped binary's flags, CGO_ENABLED=0, -trimpath and -ldflags=-s -w, and
// the given tags.
func BuildStatic(bin, pkg string, tags []string) error {
	return goBuild(bin, pkg, []string{"-trimpath", "-ldflags=-s -w"}, []string{"CGO_ENABLED=0"}, tags)
}

// goBuild runs go build -o bin args [-tags tags] pkg in the module root,
// with env added to the environment.
func goBuild(bin, pkg string, args, env, tags []string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	if len(tags) > 0 {
		// One -tags flag with every tag: go build keeps only the last flag.
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(append([]string{"build", "-o", bin}, args...), pkg)
	cmd := exec.Command(GoTool(), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %v\n%s", args, err, out)
	}
	return nil
}

// DefaultParallel raises -test.parallel to n unless the command line set it.
// The end-to-end suites spend their time waiting on real long polls and
// deadlines, not on the CPU, so GOMAXPROCS (2 in CI) would leave it idle.
// Call it from TestMain after flag.Parse.
func DefaultParallel(n int) {
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", strconv.Itoa(n))
	}
}

// RunWithBinary is the suites' TestMain body: it builds ./cmd/provision
// (with tags) into a temporary directory, hands its path to use, runs the
// tests and removes the directory. A build failure is reported under the
// suite's name and fails the run. A non-empty override (an environment
// variable naming a prebuilt binary) is used instead of building.
func RunWithBinary(m *testing.M, suite, override string, use func(bin string), tags ...string) int {
	if override != "" {
		use(override)
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "provision-"+suite+"-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", suite, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin, err := BuildProvision(dir, tags...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: building the provision binary: %v\n", suite, err)
		return 1
	}
	use(bin)
	return m.Run()
}
