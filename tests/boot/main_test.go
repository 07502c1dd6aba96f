package boot

import (
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// step-ca logs through the standard logger; keep the output readable.
	log.SetOutput(io.Discard)
	dir, err := os.MkdirTemp("", "provision-boot-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "boot:", err)
		os.Exit(1)
	}
	workDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// waitFor polls cond every half second until it holds, and fails the test
// after limit with what cond last said. The limits are generous deadlines
// for a busy 2-core machine, not timing assertions: only the outcome is
// judged.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; last state: %s", limit, what, state)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// hostsBlock is provision's managed block in a hosts file, or "".
func hostsBlock(hosts string) string {
	i := strings.Index(hosts, "# BEGIN provision managed block")
	j := strings.Index(hosts, "# END provision managed block")
	if i < 0 || j < i {
		return ""
	}
	return hosts[i:j]
}
