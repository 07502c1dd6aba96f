package fleet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	tail := " 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"
	for _, tc := range []struct {
		name, in string
		ppid     int
		cpu      time.Duration
		err      string
	}{
		{"nginx worker", "4242 (nginx) S 4241 4241 4241 0 -1 4194624 100 0 0 0 150 25 3 2" + tail, 4241, 1800 * ms, ""},
		{"comm with spaces and parentheses", "77 (a (b) c) R 1 77 77 0 -1 0 0 0 0 0 1 2 3 4" + tail, 1, 100 * ms, ""},
		{"no comm", "77 a R 1", 0, 0, "no ')'"},
		{"too few fields", "77 (x) R 1 2 3", 0, 0, "fields after comm"},
		{"ppid not a number", "77 (x) R p 77 77 0 -1 0 0 0 0 0 1 2 3 4" + tail, 0, 0, "ppid"},
		{"negative time", "77 (x) R 1 77 77 0 -1 0 0 0 0 0 -1 2 3 4" + tail, 0, 0, "not a count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := parseProcStat([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || st.ppid != tc.ppid || st.cpu != tc.cpu {
				t.Errorf("= %+v, %v; want ppid %d cpu %s", st, err, tc.ppid, tc.cpu)
			}
		})
	}
}

func TestMachineCPU(t *testing.T) {
	for _, tc := range []struct {
		name, in    string
		busy, total time.Duration
		err         bool
	}{
		{"user nice system idle iowait irq softirq steal", "cpu  100 1 50 800 20 2 3 4 0 0\ncpu0 1 2 3\n", 1600 * ms, 9800 * ms, false},
		{"old kernel, eight fields", "cpu 1 0 1 8 0 0 0 0\n", 20 * ms, 100 * ms, false},
		{"not the total line", "cpu0 1 2 3 4 5 6 7 8\n", 0, 0, true},
		{"not numbers", "cpu a b c d e f g h\n", 0, 0, true},
		{"empty", "", 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			busy, total, err := machineCPU([]byte(tc.in))
			if (err != nil) != tc.err || busy != tc.busy || total != tc.total {
				t.Errorf("= %s, %s, %v; want %s, %s, error %v", busy, total, err, tc.busy, tc.total, tc.err)
			}
		})
	}
}

func TestTreeCPU(t *testing.T) {
	procs := map[int]procStat{
		1:  {ppid: 0, cpu: 1000 * ms},
		10: {ppid: 1, cpu: 100 * ms}, // nginx master
		11: {ppid: 10, cpu: 30 * ms}, // worker
		12: {ppid: 11, cpu: 5 * ms},  // a worker's child
		20: {ppid: 1, cpu: 70 * ms},  // someone else's
	}
	for _, tc := range []struct {
		root int
		want time.Duration
		ok   bool
	}{{10, 135 * ms, true}, {11, 35 * ms, true}, {20, 70 * ms, true}, {99, 0, false}} {
		t.Run(fmt.Sprint(tc.root), func(t *testing.T) {
			got, ok := treeCPU(procs, tc.root)
			if got != tc.want || ok != tc.ok {
				t.Errorf("treeCPU(%d) = %s, %v; want %s, %v", tc.root, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// A real process tree: a shell whose child burns CPU and is reaped before
// the shell goes to sleep. The tree's CPU must include the reaped child
// (cutime), and findProc must find the shell by its command line.
func TestTreeCPUCountsReapedChildren(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "burnt")
	script := `sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'; : > "$1"; sleep 600`
	cmd := exec.Command("sh", "-c", script, "tree-cpu-test-"+filepath.Base(dir), marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its sleep goes with it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatal("the shell exited before its child was done")
		case <-time.After(20 * ms):
		}
	}
	pid, err := findProc("/proc", "tree-cpu-test-"+filepath.Base(dir))
	if err != nil {
		t.Fatal(err)
	}
	if pid != cmd.Process.Pid {
		t.Fatalf("findProc = %d, want the shell %d", pid, cmd.Process.Pid)
	}
	got, ok := treeCPU(readProcs("/proc"), pid)
	if !ok || got == 0 {
		t.Errorf("treeCPU = %s, %v: the reaped child's CPU is not counted", got, ok)
	}
	t.Logf("the shell's tree used %s of CPU", got)
	if _, err := findProc("/proc", "no-such-process-"+filepath.Base(dir)); err == nil {
		t.Error("findProc found a process that does not exist")
	}
}

func TestCPUFloor(t *testing.T) {
	c := CPU{Nodes: 3 * time.Second, Storm: 500 * ms, Ingress: 300 * ms, DB: 200 * ms, Cores: 2}
	if c.Total() != 4*time.Second || c.Floor() != 2*time.Second {
		t.Errorf("total %s floor %s, want 4s and 2s", c.Total(), c.Floor())
	}
	if (CPU{Nodes: time.Second}).Floor() != 0 {
		t.Error("no cores, yet a floor")
	}
}
