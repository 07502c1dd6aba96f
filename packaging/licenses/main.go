// Command licenses collects the licence texts of every Go module linked
// into a binary, for the .deb's /usr/share/doc/provision/licenses/:
//
//	go run ./packaging/licenses -bin PATH -out DIR
//
// The modules are the ones the binary itself records (what `go version -m`
// prints), not the ones go.mod lists, so a module that is required but not
// linked is not shipped and one that is linked cannot be missed. Each
// module's source comes from the module cache (`go mod download -json`,
// which checks it against go.sum), and every licence, notice and patents
// file at the module's root is copied to DIR/<module path>/. The Go
// standard library and runtime, linked into every Go binary, get
// DIR/go/ from GOROOT.
//
// A linked module without a licence text stops the build with its name:
// shipping the binary without it would break the terms of most of the
// licences involved (Apache-2.0 §4, BSD, MIT), and a module that claims none
// must be looked at by a person. Modules of this repository (the main module
// and modules below its path, such as clientcert) are provision's own,
// under packaging/copyright.
//
// Why not google/go-licenses: it classifies licences from the import graph
// of a package pattern with a licence classifier, which adds a large
// dependency tree to go.mod; what must be shipped is decided by what the
// binary links, which the binary records exactly.
package main

import (
	"bytes"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
)

// Module is one module linked into the binary, with the directory holding
// its source.
type Module struct {
	Path, Version string
	Dir           string
}

// licenceName matches the files that carry a module's terms: LICENSE,
// LICENCE, COPYING, UNLICENSE (a licence), NOTICE and PATENTS (which
// Apache-2.0 and the Go project's terms ask to be passed on), with any
// suffix (LICENSE.md, LICENSE-APACHE, COPYING.txt, LICENSE.libyaml).
var licenceName = regexp.MustCompile(`(?i)^(licen[cs]e|copying|unlicense|notice|patents)([._-].*)?$`)

// isLicence says whether name is a licence proper (not only a notice).
func isLicence(name string) bool {
	m := licenceName.FindStringSubmatch(name)
	return m != nil && !strings.EqualFold(m[1], "notice") && !strings.EqualFold(m[1], "patents")
}

func main() {
	bin := flag.String("bin", "", "the Go binary whose modules' licences are collected (required)")
	out := flag.String("out", "", "the directory to write DIR/<module path>/<file> into (required)")
	flag.Parse()
	if *bin == "" || *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: licenses -bin PATH -out DIR")
		os.Exit(2)
	}
	mods, err := Linked(*bin)
	if err == nil {
		err = Locate(mods)
	}
	var n int
	var goroot []byte
	if err == nil {
		goroot, err = exec.Command("go", "env", "GOROOT").Output()
	}
	if err == nil {
		n, err = Collect(mods, strings.TrimSpace(string(goroot)), *out)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "licenses: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "licenses: %d files of %d modules and the Go distribution in %s\n", n, len(mods), *out)
}

// Linked returns the modules bin records as linked into it, less the main
// module and modules below its path (this repository's own).
func Linked(bin string) ([]Module, error) {
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("reading the build info of %s: %w", bin, err)
	}
	var mods []Module
	for _, d := range bi.Deps {
		if own(d.Path, bi.Main.Path) {
			continue
		}
		m := Module{Path: d.Path, Version: d.Version}
		if d.Replace != nil {
			m.Path, m.Version = d.Replace.Path, d.Replace.Version
			if m.Version == "" { // replaced by a directory
				m.Dir = d.Replace.Path
			}
		}
		mods = append(mods, m)
	}
	return mods, nil
}

func own(path, main string) bool {
	return main != "" && (path == main || strings.HasPrefix(path, main+"/"))
}

// Locate fills in each module's directory from the module cache, through
// `go mod download -json`, which fetches a missing one and verifies it
// against go.sum.
func Locate(mods []Module) error {
	args := []string{"mod", "download", "-json"}
	idx := map[string]int{}
	for i, m := range mods {
		if m.Dir == "" {
			args = append(args, m.Path+"@"+m.Version)
			idx[m.Path+"@"+m.Version] = i
		}
	}
	if len(idx) == 0 {
		return nil
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	dec := json.NewDecoder(&stdout)
	var problems []string
	for {
		var d struct{ Path, Version, Dir, Error string }
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("go mod download -json: %v (%s)", err, strings.TrimSpace(stderr.String()))
		}
		i, ok := idx[d.Path+"@"+d.Version]
		switch {
		case !ok:
		case d.Error != "" || d.Dir == "":
			problems = append(problems, fmt.Sprintf("%s@%s: %s", d.Path, d.Version, d.Error))
		default:
			mods[i].Dir = d.Dir
		}
	}
	if len(problems) == 0 && runErr != nil {
		problems = append(problems, fmt.Sprintf("go mod download: %v: %s", runErr, strings.TrimSpace(stderr.String())))
	}
	if len(problems) > 0 {
		return fmt.Errorf("cannot find the source of the linked modules: %s", strings.Join(problems, "; "))
	}
	return nil
}

// Collect copies the licence files of every module, and of the Go
// distribution at goroot, into out/<module path>/ and out/go/. It returns
// the number of files written, and an error naming every module that has
// no licence text (the others are written all the same, so one run lists
// every gap).
func Collect(mods []Module, goroot, out string) (int, error) {
	n := 0
	var missing []string
	for _, m := range append([]Module{{Path: "go", Version: runtime.Version(), Dir: goroot}}, mods...) {
		files, err := licenceFiles(m.Dir)
		if err != nil {
			return n, fmt.Errorf("%s@%s: %w", m.Path, m.Version, err)
		}
		licensed := false
		for _, f := range files {
			licensed = licensed || isLicence(f)
			if err := copyFile(filepath.Join(m.Dir, f), filepath.Join(out, filepath.FromSlash(m.Path), f)); err != nil {
				return n, fmt.Errorf("%s@%s: %w", m.Path, m.Version, err)
			}
			n++
		}
		if !licensed {
			missing = append(missing, m.Path+"@"+m.Version)
		}
	}
	if err := openModes(out); err != nil {
		return n, err
	}
	if len(missing) > 0 {
		return n, fmt.Errorf("no licence text (LICENSE, LICENCE, COPYING or UNLICENSE at the module's root) in %d linked module(s): %s; find each one's terms before shipping it",
			len(missing), strings.Join(missing, ", "))
	}
	return n, nil
}

// licenceFiles lists the licence, notice and patents files at dir's root,
// sorted; directories and links are not files to copy.
func licenceFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range ents {
		if e.Type().IsRegular() && licenceName.MatchString(e.Name()) && !strings.HasSuffix(e.Name(), ".go") {
			files = append(files, e.Name())
		}
	}
	sort.Strings(files)
	return files, nil
}

// copyFile copies a licence file, 0644 whatever the umask (the module
// cache's files are read-only; the package's documentation is world-readable).
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		return err
	}
	return os.Chmod(dst, 0o644)
}

// openModes makes every directory under out 0755, whatever the umask made
// of MkdirAll's mode: the package ships them as they are.
func openModes(out string) error {
	return filepath.WalkDir(out, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			err = os.Chmod(p, 0o755)
		}
		return err
	})
}
