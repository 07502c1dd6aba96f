// Command rss runs a command and writes its peak RSS in KiB (the child's
// rusage ru_maxrss, from os.ProcessState.SysUsage) to the file named by
// -o. It exists because Linux carries the parent's high-water RSS into a
// child across fork+exec: measured directly from the bench, whose process
// holds step-ca, every child would report the bench's own size. This
// program is small, so the child's figure is its own.
//
//	rss -o FILE -- COMMAND [ARG...]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

func main() {
	out := flag.String("o", "", "file for the peak RSS in KiB")
	flag.Parse()
	if *out == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: rss -o FILE -- COMMAND [ARG...]")
		os.Exit(2)
	}
	cmd := exec.Command(flag.Arg(0), flag.Args()[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "rss:", err)
		os.Exit(1)
	}
	var kb int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		kb = ru.Maxrss
	}
	if err := os.WriteFile(*out, []byte(fmt.Sprint(kb)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "rss:", err)
		os.Exit(1)
	}
	os.Exit(code)
}
