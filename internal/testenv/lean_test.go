package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"strings"
	"testing"
)

func TestParseTags(t *testing.T) {
	for _, c := range []struct {
		text string
		want []string
	}{
		{"", nil},
		{"# only a comment\n\n", nil},
		{"nobadger\nnobbolt\n", []string{"nobadger", "nobbolt"}},
		{"# why\nnomysql   # trailing comment\n\n  nopgx\t\n", []string{"nomysql", "nopgx"}},
		{"a b\n", []string{"a", "b"}},
	} {
		if got := ParseTags(c.text); !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseTags(%q) = %q, want %q", c.text, got, c.want)
		}
	}
}

// TestTagsFileReadAlike: packaging/build-deb.sh reads the tags file with
// sed/tr/paste, NodeTags with ParseTags; both must give the same list.
func TestTagsFileReadAlike(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(filepath.Join(root, "packaging/build-deb.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(script), "\n") {
		if strings.HasPrefix(l, "tags=$(") {
			line = l
		}
	}
	if line == "" {
		t.Fatal("packaging/build-deb.sh does not set tags=$(...) from " + TagsFile)
	}
	cmd := exec.Command("sh", "-c", line+"\nprintf %s \"$tags\"")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	want, err := NodeTags()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out); got != strings.Join(want, ",") || len(want) == 0 {
		t.Errorf("build-deb.sh reads the tags as %q, NodeTags as %q", got, want)
	}
}

func TestLeanProblems(t *testing.T) {
	tags := []string{"nobadger", "nopgx"}
	info := func(built string, deps ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "-tags", Value: built}}}
		if built == "" {
			bi.Settings = nil
		}
		for _, d := range deps {
			bi.Deps = append(bi.Deps, &debug.Module{Path: d, Version: "v1.0.0"})
		}
		return bi
	}
	for _, c := range []struct {
		name string
		bi   *debug.BuildInfo
		want []string // substrings, one per problem
	}{
		{"lean", info("nobadger,nopgx", "github.com/smallstep/certificates"), nil},
		{"lean with the crash tests' tag", info("nobadger,nopgx,crashpoints"), nil},
		{"no tags at all", info(""), []string{"without the tag nobadger", "without the tag nopgx"}},
		{"a tag lost", info("nobadger"), []string{"without the tag nopgx"}},
		{"a driver back", info("nobadger,nopgx", "github.com/jackc/pgx/v5"), []string{"links github.com/jackc/pgx/v5 v1.0.0, which the tag nopgx drops"}},
	} {
		got := LeanProblems(c.bi, tags)
		if len(got) != len(c.want) {
			t.Errorf("%s: problems %q, want %d", c.name, got, len(c.want))
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%s: problem %q, want it to say %q", c.name, got[i], w)
			}
		}
	}
}
