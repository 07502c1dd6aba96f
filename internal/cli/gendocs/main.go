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
//	go run ./internal/cli/gendocs -runbook docs/runbook.md
//
// rewrites it from the CLI's (cli's TestRunbookExitTable fails until it
// is).
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/gpuaas/provision/internal/cli"
)

func main() {
	out := flag.String("out", "", "output `dir` (required)")
	version := flag.String("version", "dev", "version for the man page footer")
	date := flag.String("date", time.Now().UTC().Format(time.DateOnly), "date (YYYY-MM-DD) for the man page footer")
	runbook := flag.String("runbook", "", "rewrite the exit-code table of this `file` (docs/runbook.md) from the CLI's, and do nothing else")
	flag.Parse()
	if *runbook != "" {
		b, err := os.ReadFile(*runbook)
		if err == nil {
			var doc string
			if doc, err = cli.WithRunbookTable(string(b)); err == nil {
				err = os.WriteFile(*runbook, []byte(doc), 0o644)
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "gendocs: %v\n", err)
			os.Exit(1)
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
