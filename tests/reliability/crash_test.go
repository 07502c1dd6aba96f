package reliability

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/credstore"
	"github.com/gpuaas/provision/internal/state"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// userLine is a line of the node's own hosts file that must survive.
const userLine = "10.1.2.3\tbuild-cache.example.internal"

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

// crashNode is one worker's node in the crash test.
type crashNode struct {
	*node
	oldHosts, newHosts []byte
	tasks              []string // task IDs queued and not yet taken
	seq                int
}

// queueTask makes sure a task is waiting so the proof answers 200 at once
// (instead of holding the long poll), and returns the ID the next proof
// will receive.
func (c *crashNode) queueTask() string {
	if taken := len(c.tasks) - c.CP.API.Pending(c.ID); taken > 0 {
		c.tasks = c.tasks[taken:]
	}
	if len(c.tasks) == 0 {
		c.seq++
		t := c.CP.API.QueueTask(c.ID, controlplane.Task{ID: fmt.Sprintf("task-%s-%d", c.ID, c.seq), Kind: "noop"})
		c.tasks = append(c.tasks, t.ID)
	}
	return c.tasks[0]
}

// crashStats are the counts the crash test prints.
type crashStats struct {
	mu                                      sync.Mutex
	kills, finishedFirst, targeted, random  int
	burnt, partialLinks, hostsOld, hostsNew int
	receiptsAfterKill, completions          int
	perStep                                 map[string]int
	violations                              []string
}

func (s *crashStats) add(f func(s *crashStats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *crashStats) violate(format string, args ...any) {
	s.add(func(s *crashStats) { s.violations = append(s.violations, fmt.Sprintf(format, args...)) })
}

// scenario prepares the node before a run that will be killed.
//   - "fresh": no credentials, no receipt, the original hosts file.
//   - "reenroll": a complete earlier bootstrap whose key was found 0644, so
//     the run must enroll again and swap generations under existing links.
func (c *crashNode) scenario(kind string) {
	t := c.T
	st := c.Files.StateDir
	for _, p := range []string{state.ReceiptFile, state.PendingFile, filepath.Join(state.DoneDir, machineID)} {
		os.Remove(filepath.Join(st, p))
	}
	if err := os.WriteFile(c.Files.HostsPath, c.oldHosts, 0o644); err != nil {
		t.Fatal(err)
	}
	switch kind {
	case "fresh":
		os.RemoveAll(c.Files.PKIDir)
	case "reenroll":
		if err := os.Chmod(filepath.Join(c.Files.PKIDir, credstore.CurrentLink, credstore.KeyFile), 0o644); err != nil {
			t.Fatalf("reenroll scenario needs a bootstrapped node: %v", err)
		}
	}
	c.GiveToken()
}

// killAt runs bootstrap and kills it: at the hook step when step != "",
// otherwise after delay. It reports whether the process died of SIGKILL.
func (c *crashNode) killAt(step string, delay time.Duration) (nodetest.Result, bool) {
	if step != "" {
		r := c.bootstrap("PROVISION_CRASH_AT=" + step)
		return r, r.Killed
	}
	return c.killAfter(delay, "bootstrap")
}

// checkAfterKill checks the invariants that must hold at any instant.
func (c *crashNode) checkAfterKill(s *crashStats, label string, proofsBefore int) {
	hb, err := os.ReadFile(c.Files.HostsPath)
	switch {
	case err != nil:
		s.violate("%s: hosts file unreadable after the kill: %v", label, err)
	case bytes.Equal(hb, c.oldHosts):
		s.add(func(s *crashStats) { s.hostsOld++ })
	case bytes.Equal(hb, c.newHosts):
		s.add(func(s *crashStats) { s.hostsNew++ })
	default:
		s.violate("%s: hosts file is neither the old nor the new version:\n%q", label, hb)
	}
	if !bytes.Contains(hb, []byte(userLine)) {
		s.violate("%s: the user line %q was lost", label, userLine)
	}
	cs := readCreds(c.Files.PKIDir)
	if cs.mismatch != "" {
		s.violate("%s: credentials: %s", label, cs.mismatch)
	}
	if cs.partial != "" {
		s.add(func(s *crashStats) { s.partialLinks++ })
	}
	if rb, err := os.ReadFile(filepath.Join(c.Files.StateDir, state.ReceiptFile)); err == nil {
		s.add(func(s *crashStats) { s.receiptsAfterKill++ })
		var rc state.Receipt
		if err := json.Unmarshal(rb, &rc); err != nil {
			s.violate("%s: torn receipt: %v", label, err)
		}
		if proofSeen(c.CP, c.ID) <= proofsBefore {
			s.violate("%s: a receipt exists but the node API answered no proof of %s in this run", label, c.ID)
		}
		if rc.Serial != cs.serial {
			s.violate("%s: the receipt names serial %s, the installed certificate is %s", label, rc.Serial, cs.serial)
		}
	}
}

// complete re-runs bootstrap until it succeeds, with a fresh token when the
// kill burnt the old one, and checks the end state.
func (c *crashNode) complete(s *crashStats, label string) {
	c.queueTask()
	r := c.bootstrap()
	if r.Code == 20 {
		// The kill came after the CA saw the token: the run must say so.
		if !strings.Contains(r.Stdout, "an earlier run presented this same token") || !strings.Contains(r.Stdout, "burnt") {
			s.violate("%s: re-run exit 20 without naming the burnt token:\n%s", label, r.LastOutputLine())
		}
		s.add(func(s *crashStats) { s.burnt++ })
		c.GiveToken()
		c.queueTask()
		r = c.bootstrap()
	}
	if r.Code != 0 {
		s.violate("%s: re-run did not complete the bootstrap: %s", label, r)
		return
	}
	s.add(func(s *crashStats) { s.completions++ })
	if left := tempLeftovers(c.Files.Root); len(left) > 0 {
		s.violate("%s: temp files left after a completed re-run: %v", label, left)
	}
	cs := readCreds(c.Files.PKIDir)
	if cs.none || cs.partial != "" || cs.mismatch != "" {
		s.violate("%s: after completion credentials are %+v", label, cs)
	}
	hb, _ := os.ReadFile(c.Files.HostsPath)
	if !bytes.Equal(hb, c.newHosts) {
		s.violate("%s: after completion the hosts file is not the new version", label)
	}
	rb, err := os.ReadFile(filepath.Join(c.Files.StateDir, state.ReceiptFile))
	var rc state.Receipt
	if err != nil || json.Unmarshal(rb, &rc) != nil || rc.Serial != cs.serial {
		s.violate("%s: after completion no receipt for serial %s (%v)", label, cs.serial, err)
	}
	if fileExists(c.Files.TokenPath) {
		s.violate("%s: the (used) token file is still on disk after a completed bootstrap", label)
	}
	if fileExists(filepath.Join(c.Files.StateDir, state.PendingFile)) {
		s.violate("%s: %s left behind after a completed bootstrap", label, state.PendingFile)
	}
	// current, the rollback target, and at most one set a killed run left
	// aside (the next run adopts it rather than spend another token).
	if gens := credstore.Generations(c.Files.PKIDir); len(gens) > 3 {
		s.violate("%s: %d generation directories, want at most 3", label, len(gens))
	}
}

// targetedSteps are the hook points, by scenario; "TASK" stands for the
// task file the proof saves.
var targetedSteps = []string{
	"before rename hosts", // temp hosts file written, not yet renamed
	"hosts written",
	"before rename " + state.PendingFile,
	"before sign",
	"after sign",
	"wrote key.pem", // between key and cert
	"wrote cert.pem",
	"wrote ca.pem",
	"generation ready",
	"current switched",
	"before rename TASK",
	"before receipt",
	"before rename " + state.ReceiptFile,
	"before rename " + machineID, // the per-install done marker
}

// TestCrashConsistency SIGKILLs `provision bootstrap` at every hook point and
// at seeded random instants, hundreds of times, and after every kill checks
// that the hosts file is the old or the new version byte for byte with the
// user's lines, that the key (through current and through the stable links)
// matches the certificate or there are no credentials, and that a receipt
// exists only after a proof the node API answered. A re-run must then
// complete (with a fresh token, named as needed, when the kill burnt the old
// one), sweep every temp file, and leave one receipt for the installed
// certificate, no token file and no enrollment marker.
//
// RELIABILITY_KILLS (default 300) sets the random kills, RELIABILITY_TARGETED
// (default 3) the repetitions of each hook point per scenario,
// RELIABILITY_SEED the seed, RELIABILITY_WORKERS the parallel nodes (4).
func TestCrashConsistency(t *testing.T) {
	randomKills := envInt("RELIABILITY_KILLS", 300)
	reps := envInt("RELIABILITY_TARGETED", 3)
	seed := uint64(envInt("RELIABILITY_SEED", 20260301))
	workers := max(1, envInt("RELIABILITY_WORKERS", 4))
	// One control plane per worker: step-ca v0.30.2 races on its own
	// audience slice when two signs run at once (Audiences.All), which
	// -race reports; each worker's node enrolls against its own CA.
	cps := make([]*controlplane.ControlPlane, workers)
	for w := range cps {
		cps[w] = controlplane.Start(t, controlplane.Options{})
	}

	type job struct {
		scenario string
		step     string
	}
	var jobs []job
	for r := 0; r < reps; r++ {
		for _, sc := range []string{"fresh", "reenroll"} {
			for _, st := range targetedSteps {
				jobs = append(jobs, job{sc, st})
			}
		}
	}
	for i := 0; i < randomKills; i++ {
		jobs = append(jobs, job{[]string{"fresh", "reenroll"}[i%2], ""})
	}
	stats := &crashStats{perStep: map[string]int{}}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			cp := cps[w]
			c := &crashNode{node: newNode(t, cp, fmt.Sprintf("gpu-crash-%02d", w), nil)}
			c.oldHosts, _ = os.ReadFile(c.Files.HostsPath)
			c.queueTask()
			start := time.Now()
			if r := c.bootstrap(); r.Code != 0 {
				stats.violate("worker %d: first bootstrap failed: %s", w, r)
				return
			}
			full := time.Since(start)
			c.newHosts, _ = os.ReadFile(c.Files.HostsPath)
			for i := w; i < len(jobs); i += workers {
				j := jobs[i]
				c.scenario(j.scenario)
				taskID := c.queueTask()
				step := strings.ReplaceAll(j.step, "TASK", taskID+".json")
				before := proofSeen(cp, c.ID)
				label := fmt.Sprintf("worker %d job %d (%s, step %q)", w, i, j.scenario, j.step)
				var delay time.Duration
				if step == "" {
					delay = time.Duration(rng.Int64N(int64(full)))
					label += fmt.Sprintf(" delay %s", delay)
				}
				r, killed := c.killAt(step, delay)
				switch {
				case killed:
					stats.add(func(s *crashStats) {
						s.kills++
						if step != "" {
							s.targeted++
							s.perStep[j.step]++
						} else {
							s.random++
						}
					})
				case step != "":
					stats.violate("%s: hook step never reached (exit %d): %s", label, r.Code, r.LastOutputLine())
				default:
					stats.add(func(s *crashStats) { s.finishedFirst++ })
				}
				c.checkAfterKill(stats, label, before)
				c.complete(stats, label)
			}
		}(w)
	}
	wg.Wait()
	for st, n := range stats.perStep {
		t.Logf("  hook %-40q %d kills", st, n)
	}
	t.Logf("kills: %d (targeted %d at %d hook points, random %d); random runs that finished before their kill: %d",
		stats.kills, stats.targeted, len(stats.perStep), stats.random, stats.finishedFirst)
	t.Logf("after the kills: hosts old %d / new %d; receipts present %d; first-install stable links incomplete %d; burnt tokens named and replaced %d; completed re-runs %d",
		stats.hostsOld, stats.hostsNew, stats.receiptsAfterKill, stats.partialLinks, stats.burnt, stats.completions)
	for i, v := range stats.violations {
		if i == 20 {
			t.Errorf("... and %d more", len(stats.violations)-20)
			break
		}
		t.Error(v)
	}
	t.Logf("crash-consistency: %d kills, %d violations", stats.kills, len(stats.violations))
	if stats.kills < 100 && randomKills >= 100 {
		t.Errorf("only %d kills landed; the test is not exercising enough points", stats.kills)
	}
}
