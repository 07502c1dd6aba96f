package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/gpuaas/provision/internal/verify"
)

var statusTag = map[verify.Status]string{verify.Pass: "[PASS]", verify.Fail: "[FAIL]", verify.Warn: "[WARN]", verify.Skip: "[SKIP]"}

// printReport renders the report and returns its exit code. The text form
// ends with one line a person can act on.
func printReport(env *runEnv, f *flags, r *verify.Report) int {
	code := ExitOK
	if !r.OK {
		code = ExitCode(r.FailedLayer)
	}
	if f.format == "json" {
		type out struct {
			*verify.Report
			ExitCode int `json:"exit_code"`
		}
		b, _ := json.MarshalIndent(out{r, code}, "", "  ")
		fmt.Fprintln(env.stdout, string(b))
		return code
	}
	w := env.stdout
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	for _, c := range r.Checks {
		fmt.Fprintf(w, "%s %-*s  %s\n", statusTag[c.Status], width, c.Name, c.Message)
	}
	if r.OK {
		for _, c := range r.Checks {
			if c.Status == verify.Warn && c.Remedy != "" {
				fmt.Fprintf(w, "  warning (%s): %s\n", c.Name, c.Remedy)
			}
		}
		fmt.Fprintf(w, "\nprovision %s: %s\n", r.Command, r.Summary)
		return code
	}
	rc := r.RootCause()
	fmt.Fprintf(w, "\nRoot cause: layer %s, owner %s (check %s)\n", r.FailedLayer, r.Owner, r.FailedCheck)
	fmt.Fprintf(w, "  what:   %s\n", r.Summary)
	if r.Remedy != "" {
		fmt.Fprintf(w, "  fix:    %s\n", r.Remedy)
	}
	if rc != nil && len(rc.Evidence) > 0 {
		fmt.Fprintln(w, "  evidence:")
		keys := make([]string, 0, len(rc.Evidence))
		for k := range rc.Evidence {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "    %s: %s\n", k, oneLine(rc.Evidence[k]))
		}
	}
	fix := r.Remedy
	if fix == "" {
		fix = "see the checks above"
	}
	fmt.Fprintf(w, "\nprovision %s: FAILED at layer %s (owner: %s): %s. Next: %s (exit %d)\n", r.Command, r.FailedLayer, r.Owner, strings.TrimSuffix(r.Summary, "."), fix, code)
	return code
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return s
}
