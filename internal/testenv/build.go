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

// BuildProvision builds ./cmd/provision into dir and returns the binary's
// path. The suites that run the real binary build it once in TestMain. When
// the tests run with -race, so does the binary: the product's goroutines run
// there. tags are extra build tags (the crash tests use "crashpoints").
func BuildProvision(dir string, tags ...string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "provision")
	args := []string{"build", "-o", bin}
	if RaceEnabled {
		args = append(args, "-race")
	}
	if len(tags) > 0 {
		// One -tags flag with every tag: go build keeps only the last flag.
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command(GoTool(), append(args, "./cmd/provision")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %v: %v\n%s", args, err, out)
	}
	return bin, nil
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
