// Command gendocs writes provision's man pages and shell completions,
// generated from the CLI's command table and help text, into a directory:
//
//	go run ./internal/cli/gendocs -out DIR -version 1.2.3 -date 2026-03-01
//
// writes DIR/man8/provision.8, DIR/man8/provision-<command>.8,
// DIR/man5/provision.toml.5 (from the config's key table),
// DIR/completion/provision.bash and DIR/completion/_provision.
// packaging/build-deb.sh runs it at build time; nothing generated is
// committed, but for the exit-code table of docs/runbook.md:
//
//	go run ./internal/cli/gendocs -exit-table docs/runbook.md -exit-table README.md
//
// rewrites it, and the README's, from the CLI's (cli's TestExitTables
// fails until it is).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuaas/provision/internal/cli"
)

func main() {
	out := flag.String("out", "", "output `dir` (required)")
	version := flag.String("version", "dev", "version for the man page footer")
	date := flag.String("date", time.Now().UTC().Format(time.DateOnly), "date (YYYY-MM-DD) for the man page footer")
	var tables []string
	flag.Func("exit-table", "rewrite the exit-code table of this `file` (docs/runbook.md, README.md) from the CLI's, and do nothing else; repeatable", func(s string) error {
		tables = append(tables, s)
		return nil
	})
	flag.Parse()
	if len(tables) > 0 {
		for _, file := range tables {
			if err := rewriteTable(file); err != nil {
				fmt.Fprintf(os.Stderr, "gendocs: %s: %v\n", file, err)
				os.Exit(1)
			}
		}
		return
	}
	if *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: gendocs -out DIR [-version V] [-date YYYY-MM-DD]")
		os.Exit(2)
	}
	if _, err := time.Parse(time.DateOnly, *date); err != nil {
		fmt.Fprintf(os.Stderr, "gendocs: -date %q: want YYYY-MM-DD\n", *date)
		os.Exit(2)
	}
	if err := cli.WriteDocs(*out, *version, *date); err != nil {
		fmt.Fprintf(os.Stderr, "gendocs: %v\n", err)
		os.Exit(1)
	}
}

// rewriteTable rewrites file's exit-code table; its links lead into
// docs/runbook.md, from wherever file is.
func rewriteTable(file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	runbook := ""
	if filepath.Base(file) != "runbook.md" {
		root := filepath.Dir(file)
		if runbook, err = filepath.Rel(root, filepath.Join(root, "docs", "runbook.md")); err != nil {
			return err
		}
	}
	doc, err := cli.WithExitTable(string(b), runbook)
	if err != nil {
		return err
	}
	return os.WriteFile(file, []byte(doc), 0o644)
}
