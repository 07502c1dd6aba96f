package reliability

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// TestConcurrentRuns starts two real provision processes at once on the same
// root, several times. The lock (state_dir/.lock) serialises them: both exit
// 0, or the second waits and says in its log whose lock it waited for (the
// holder's pid). Afterwards nothing is corrupted: at most two complete
// generation directories, the key matches the certificate through the
// stable links, the hosts file has exactly one managed block.
func TestConcurrentRuns(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Options{})
	const rounds = 10
	waits := 0
	pidRe := regexp.MustCompile(`holder="?pid \d+`)
	for i := 0; i < rounds; i++ {
		n := newNode(t, cp, fmt.Sprintf("gpu-conc-%d", i), nil)
		cp.API.QueueTask(n.ID, controlplane.Task{Kind: "a"})
		cp.API.QueueTask(n.ID, controlplane.Task{Kind: "b"})
		results := make(chan nodetest.Result, 2)
		start := make(chan struct{})
		for j := 0; j < 2; j++ {
			go func() { <-start; results <- n.bootstrap() }()
		}
		close(start)
		for j := 0; j < 2; j++ {
			r := <-results
			if r.Code != 0 {
				t.Errorf("round %d: a concurrent run failed: %s", i, r)
				continue
			}
			if strings.Contains(r.Stderr, "waiting for the lock") {
				waits++
				if !pidRe.MatchString(r.Stderr) {
					t.Errorf("round %d: the waiting run does not name the lock holder's pid:\n%s", i, r.Stderr)
				}
			}
		}
		cs := readCreds(n.Files.PKIDir)
		if cs.none || cs.partial != "" || cs.mismatch != "" {
			t.Errorf("round %d: credentials after two concurrent runs: %+v", i, cs)
		}
		if g := credstore.Generations(n.Files.PKIDir); len(g) < 1 || len(g) > 2 {
			t.Errorf("round %d: %d generation directories: %v", i, len(g), g)
		}
		if left := tempLeftovers(n.Files.Root); len(left) > 0 {
			t.Errorf("round %d: temp files: %v", i, left)
		}
		hb := readFile(t, n.Files.HostsPath)
		if strings.Count(hb, beginM) != 1 || !strings.Contains(hb, userLine) {
			t.Errorf("round %d: hosts file after two concurrent runs:\n%s", i, hb)
		}
	}
	t.Logf("concurrency: %d rounds of 2 simultaneous runs, %d waited for the lock and named its holder, 0 corruptions", rounds, waits)
	if waits == 0 {
		t.Error("no run ever waited for the lock: the test did not exercise it")
	}
}
