package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPU is the CPU time (user + system) the processes of one storm used,
// by part, and what the machine did meanwhile. It is what makes the storm's
// time to done comparable with what the CPUs allow: Floor is the time the
// storm would take if its CPU work were spread perfectly over every core.
type CPU struct {
	// Nodes is every provision run, from wait4's rusage of each process
	// (its own children, such as getent, included).
	Nodes time.Duration
	// Storm is this process: step-ca, the CA proxy and the node API run
	// in it, together with the harness that starts the nodes. Go cannot
	// split one process's CPU by goroutine without profiling, so the
	// harness's small share (fork/exec and waiting) is counted with them.
	Storm time.Duration
	// Ingress is nginx, master and workers.
	Ingress time.Duration
	// DB is PostgreSQL (the postmaster and its backends) when step-ca
	// runs on it.
	DB time.Duration
	// Cores is what Go may run on (sched_getaffinity).
	Cores int
	// MachineBusy is every process on the machine over the same window,
	// ours and everyone else's (/proc/stat); MachineTotal is the CPU time
	// the cores had (busy + idle + iowait). Their difference from Total is
	// the share other work took from the storm.
	MachineBusy, MachineTotal time.Duration
	// LoadStart and LoadEnd are /proc/loadavg's 1/5/15-minute averages.
	LoadStart, LoadEnd string
	// Missing names the parts that could not be measured (and are 0).
	Missing []string
}

// Total is the CPU time of every part the storm ran.
func (c CPU) Total() time.Duration { return c.Nodes + c.Storm + c.Ingress + c.DB }

// Floor is Total spread over every core: no storm on this machine can
// finish sooner than that.
func (c CPU) Floor() time.Duration {
	if c.Cores < 1 {
		return 0
	}
	return c.Total() / time.Duration(c.Cores)
}

// clockTick is USER_HZ, the unit of /proc's CPU times: 100 on every Linux
// architecture Go supports (the kernel exports it fixed, whatever HZ is).
const clockTick = 10 * time.Millisecond

// procStat is what one /proc/<pid>/stat says about CPU.
type procStat struct {
	ppid int
	// cpu is utime + stime + cutime + cstime: the process's own time and
	// that of the children it has reaped (a PostgreSQL backend that has
	// exited, an nginx worker that was replaced).
	cpu time.Duration
}

// parseProcStat parses /proc/<pid>/stat. comm, in parentheses, may hold
// spaces and parentheses: the fields start after the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("no ')' after comm")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("%d fields after comm, want at least 15", len(f))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("ppid %q: %w", f[1], err)
	}
	var ticks int64
	for _, s := range f[11:15] { // utime stime cutime cstime
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return procStat{}, fmt.Errorf("CPU time %q is not a count of ticks", s)
		}
		ticks += v
	}
	return procStat{ppid: ppid, cpu: time.Duration(ticks) * clockTick}, nil
}

// readProcs reads every process's stat. A process that exits while it is
// read is left out: its time is in its parent's cutime once reaped.
func readProcs(proc string) map[int]procStat {
	ents, _ := os.ReadDir(proc)
	out := make(map[int]procStat, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue
		}
		if st, err := parseProcStat(b); err == nil {
			out[pid] = st
		}
	}
	return out
}

// treeCPU is the CPU time of root and every descendant alive, each with
// the children it reaped.
func treeCPU(procs map[int]procStat, root int) (time.Duration, bool) {
	if _, ok := procs[root]; !ok {
		return 0, false
	}
	kids := map[int][]int{}
	for pid, st := range procs {
		kids[st.ppid] = append(kids[st.ppid], pid)
	}
	var sum time.Duration
	for todo := []int{root}; len(todo) > 0; {
		pid := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		sum += procs[pid].cpu
		todo = append(todo, kids[pid]...)
	}
	return sum, true
}

// findProc returns the pid of the process whose command line contains
// every one of want: nginx's master keeps its -p directory in its title.
func findProc(proc string, want ...string) (int, error) {
	ents, _ := os.ReadDir(proc)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		found := true
		for _, w := range want {
			found = found && strings.Contains(cmd, w)
		}
		if found {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no process in %s has %q in its command line", proc, want)
}

// machineCPU parses /proc/stat's first line into busy and total time.
func machineCPU(b []byte) (busy, total time.Duration, err error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("first line %q is not the cpu total", line)
	}
	var v [8]int64 // user nice system idle iowait irq softirq steal
	for i := range v {
		if v[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("cpu field %d %q: %w", i+1, f[i+1], err)
		}
	}
	b64 := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
	return time.Duration(b64) * clockTick, time.Duration(b64+v[3]+v[4]) * clockTick, nil
}

// LoadAvg is /proc/loadavg's 1, 5 and 15-minute load averages.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter takes the long-lived parts' CPU at the start of a storm and
// again at its end; the nodes are added run by run from their rusage.
type cpuMeter struct {
	ingressPid, dbPid int
	start             cpuSample
	missing           []string
}

type cpuSample struct {
	self, ingress, db, busy, total time.Duration
	load                           string
}

func (m *cpuMeter) sample() cpuSample {
	s := cpuSample{self: selfCPU(), load: LoadAvg()}
	procs := readProcs("/proc")
	for _, p := range []struct {
		pid  int
		into *time.Duration
	}{{m.ingressPid, &s.ingress}, {m.dbPid, &s.db}} {
		if p.pid > 0 {
			*p.into, _ = treeCPU(procs, p.pid)
		}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		s.busy, s.total, _ = machineCPU(b)
	}
	return s
}

// newCPUMeter finds nginx by its directory (dbPid 0: no database to count)
// and takes the first sample.
func newCPUMeter(ingressDir string, dbPid int) *cpuMeter {
	m := &cpuMeter{dbPid: dbPid}
	pid, err := findProc("/proc", "-p "+ingressDir+"/")
	if err != nil {
		m.missing = append(m.missing, "nginx ("+err.Error()+")")
	}
	m.ingressPid = pid
	m.start = m.sample()
	return m
}

// stop takes the second sample and returns the long-lived parts' share.
func (m *cpuMeter) stop() CPU {
	end := m.sample()
	return CPU{
		Storm: end.self - m.start.self, Ingress: end.ingress - m.start.ingress, DB: end.db - m.start.db,
		Cores: runtime.NumCPU(), MachineBusy: end.busy - m.start.busy, MachineTotal: end.total - m.start.total,
		LoadStart: m.start.load, LoadEnd: end.load, Missing: m.missing,
	}
}
