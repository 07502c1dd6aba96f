package testenv

import (
	"fmt"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
)

// DroppedModules are modules the node's build tags (TagsFile) keep out of
// the provision binary, each with the tag that drops it: step-ca's storage
// drivers and the step command line's man-page generator. Linked again, they
// would be shipped, scanned and reported on every node for code it never
// runs.
var DroppedModules = map[string]string{
	"github.com/dgraph-io/badger":        "nobadger",
	"github.com/dgraph-io/badger/v2":     "nobadger",
	"github.com/dgraph-io/ristretto":     "nobadger",
	"go.etcd.io/bbolt":                   "nobbolt",
	"github.com/go-sql-driver/mysql":     "nomysql",
	"github.com/jackc/pgx/v5":            "nopgx",
	"github.com/cpuguy83/go-md2man/v2":   "urfave_cli_no_docs",
	"github.com/russross/blackfriday/v2": "urfave_cli_no_docs",
}

// DroppedPackages are packages of modules still linked that the tags keep
// out (a binary's build info names modules only: go list -deps sees these).
var DroppedPackages = map[string]string{
	"golang.org/x/net/trace": "grpcnotrace",
}

// LeanProblems lists what is wrong with a provision binary's build info:
// it was not built with exactly tags (plus extra ones such as the crash
// tests'), or it links a module of DroppedModules. Empty when it is lean.
func LeanProblems(bi *debug.BuildInfo, tags []string) []string {
	var probs []string
	var built []string
	for _, s := range bi.Settings {
		if s.Key == "-tags" {
			built = strings.Split(s.Value, ",")
		}
	}
	for _, t := range tags {
		if !slices.Contains(built, t) {
			probs = append(probs, fmt.Sprintf("built without the tag %s (%s lists it; build tags were %q)", t, TagsFile, strings.Join(built, ",")))
		}
	}
	for _, d := range bi.Deps {
		if tag, ok := DroppedModules[d.Path]; ok {
			probs = append(probs, fmt.Sprintf("links %s %s, which the tag %s drops: a change brought it back", d.Path, d.Version, tag))
		}
	}
	sort.Strings(probs)
	return probs
}
