// Package cli is the only place that prints, chooses wording and hints, and
// decides exit codes. Every other package returns values and errors.
package cli

import (
	"context"
	"fmt"
	"io"
)

// Run executes the provision command line and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "provision: not implemented yet")
	return 1
}
