package fleet

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpuaas/provision/tests/controlplane"
)

// StormOptions shape one boot storm.
type StormOptions struct {
	Name   string
	Nodes  int
	Spread time.Duration // the nodes start evenly within this window
	Binary string        // the provision binary
	Work   string        // node roots go under it
	// Deadline is each node's bootstrap.deadline, RequestTimeout its
	// bootstrap.request_timeout ("": the lab's 5s).
	Deadline, RequestTimeout string
	// Restart is what provision.service's Restart=on-failure waits
	// before starting a failed run again (the unit's RestartSec=30s);
	// MaxStarts bounds the starts (the unit's StartLimitBurst=6).
	Restart   time.Duration
	MaxStarts int
	// RestartAccuracy is systemd's timer accuracy, within which each
	// node's restart lands at a phase of its own (see restartAt): 0 is
	// systemd's SystemdAccuracy, a negative value an exact timer.
	RestartAccuracy time.Duration
	// CAFault, when set, is installed on the CA proxy for CAFaultFor from
	// the fleet's first request at the CA, or, with CAFaultUntilFirstRuns,
	// from the start until every node's first run has ended.
	CAFault               *Fault
	CAFaultFor            time.Duration
	CAFaultUntilFirstRuns bool
	// APIFault503 makes the node API answer 503 for this long from the
	// fleet's first request at the CA.
	APIFault503 time.Duration
	// DBPid is the PostgreSQL postmaster step-ca uses, whose CPU (with its
	// backends') the storm counts; 0 when there is none.
	DBPid int
}

// BalancerNotFound is the page a balancer answers itself for a route it
// does not have (nginx's): not step-ca's JSON, so provision does not
// retry it.
const BalancerNotFound = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"

// FailTogether makes o the storm of a fleet that fails together and is
// restarted together: the CA hangs (every request held) until every node
// waits on it, then its balancer answers all of them 404 in the same
// instant (a lost route, which provision cannot retry), and keeps doing so
// until every node's first run has failed. Then the CA is back, and
// RestartSec later provision.service restarts the whole fleet.
//
// Why not simply a CA down for longer than bootstrap.deadline: each run's
// deadline starts when its process does, and on a shared 2-core machine
// the processes of a fleet started together take seconds of CPU to get
// going, so they would fail, and return, spread over those seconds.
// Failing them by one event keeps what the herd check must see: a fleet
// that failed in one instant.
func (o *StormOptions) FailTogether() {
	o.CAFault = &Fault{Status: 404, Share: 1, HTML: BalancerNotFound, HoldUntil: o.Nodes}
	o.CAFaultUntilFirstRuns = true
	o.RequestTimeout = "2m" // no node gives up on its held request while the fleet starts
}

// Run is one start of a node's bootstrap, as systemd would see it.
type Run struct {
	// Due is when systemd would start it (its place in the spread, or the
	// restart timer); Start is when the harness did, End when it exited;
	// all since the storm started.
	Due, Start, End time.Duration
	Code            int
	Why             string // failed_check and summary of a failed run
	CPU             time.Duration
	// Waited says the run logged a restart-splay wait (it took itself for
	// a restart), Splay the wait it drew.
	Waited bool
	Splay  time.Duration
}

// NodeRun is one node's storm.
type NodeRun struct {
	ID     string
	Starts int
	Runs   []Run
	Done   bool
	ToDone time.Duration // from its own start to the end of its successful run
	DoneAt time.Duration // since the storm started
}

// StormResult is what a storm measured.
type StormResult struct {
	Opts     StormOptions
	Nodes    []NodeRun
	Events   []Event       // at the CA proxy, At relative to the storm's start
	Conns    []Conn        // at the CA proxy, At relative to the storm's start
	Duration time.Duration // until the last node finished
	FaultEnd time.Duration
	CPU      CPU
}

// storm is one storm in flight.
type storm struct {
	f         *Fleet
	opts      StormOptions
	res       *StormResult
	cfgs      []string // each node's --config
	roots     []string
	t0        time.Time
	firstLeft atomic.Int64 // nodes whose first run has not ended
}

// Storm starts opts.Nodes real provision processes against f (which needs
// its CA proxy), each with its own root and token, and waits for all.
func Storm(ctx context.Context, f *Fleet, opts StormOptions) (*StormResult, error) {
	if f.Proxy == nil {
		return nil, errors.New("the storm counts at the CA proxy: start the fleet with Options.Proxy")
	}
	if opts.MaxStarts <= 0 {
		opts.MaxStarts = 6
	}
	if opts.Deadline == "" {
		opts.Deadline = "5m"
	}
	if opts.RestartAccuracy == 0 {
		opts.RestartAccuracy = SystemdAccuracy
	}
	st := &storm{f: f, opts: opts, res: &StormResult{Opts: opts, Nodes: make([]NodeRun, opts.Nodes)}}
	if err := st.prepare(); err != nil {
		return nil, err
	}
	skipEvents, skipConns := len(f.Proxy.Events()), len(f.Proxy.Conns())
	meter := newCPUMeter(f.Ingress.Dir, opts.DBPid)
	st.t0 = time.Now()
	base := f.Proxy.Since()
	defer st.faults()()
	st.firstLeft.Store(int64(opts.Nodes))
	var wg sync.WaitGroup
	for i := range st.res.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st.node(ctx, i)
		}()
	}
	wg.Wait()
	res := st.res
	res.Duration = time.Since(st.t0)
	res.CPU = meter.stop()
	for _, n := range res.Nodes {
		for _, r := range n.Runs {
			res.CPU.Nodes += r.CPU
		}
	}
	if opts.CAFault != nil {
		f.Proxy.SetFault(nil) // a fault outlasting the storm must not reach the next one
	}
	for _, e := range f.Proxy.Events()[skipEvents:] {
		e.At -= base
		res.Events = append(res.Events, e)
	}
	if !opts.CAFaultUntilFirstRuns {
		res.FaultEnd = st.faultEnd(res.Events)
	}
	for _, c := range f.Proxy.Conns()[skipConns:] {
		c.At -= base
		c.Accepted -= base
		res.Conns = append(res.Conns, c)
	}
	return res, ctx.Err()
}

// prepare writes every node's root: its config, reaching the CA proxy by
// the node's own hostname (so the proxy sees which node connects), and a
// fresh one-time token.
func (st *storm) prepare() error {
	st.cfgs = make([]string, st.opts.Nodes)
	st.roots = make([]string, st.opts.Nodes)
	for i := range st.cfgs {
		id := fmt.Sprintf("%s-%05d", st.opts.Name, i)
		root := filepath.Join(st.opts.Work, id)
		tok, err := st.f.CP.Token(id, controlplane.TokenLifetime(time.Hour))
		if err != nil {
			return err
		}
		cfg := st.f.NodeConfig(id, st.opts.Deadline)
		if st.opts.RequestTimeout != "" {
			cfg.Bootstrap.RequestTimeout = st.opts.RequestTimeout
		}
		host := st.f.Proxy.NodeHostname(id)
		cfg.Hosts = append(cfg.Hosts, controlplane.HostEntry{Name: host, IP: "127.0.0.1"})
		cfg.CA.URL = "https://" + net.JoinHostPort(host, strconv.Itoa(st.f.Proxy.Port()))
		files, err := controlplane.WriteNode(root, cfg, tok)
		if err != nil {
			return err
		}
		st.cfgs[i], st.roots[i] = files.ConfigArg, root
		st.res.Nodes[i].ID = id
	}
	return nil
}

// faults installs the scenario's faults and returns what removes them. A
// fault lasts from the fleet's first request at the CA, not from the
// storm's start: a fleet of processes that share the machine's cores
// reaches the CA 15-35 s after the start, depending on other load, so a
// fault timed from the start would hit anything from all to none of the
// traffic. st.faultFrom learns when that first request came.
func (st *storm) faults() func() {
	opts := st.opts
	first := st.f.Proxy.Mark()
	if opts.CAFault != nil {
		fault := *opts.CAFault
		fault.Until, fault.For = time.Time{}, opts.CAFaultFor
		if opts.CAFaultUntilFirstRuns {
			fault.Until = st.t0.Add(24 * time.Hour) // firstRunEnded removes it
		}
		st.f.Proxy.SetFault(&fault)
	}
	if opts.APIFault503 <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-first:
		case <-done:
			return
		}
		st.f.API.FailAlways(controlplane.StatusFault(503))
		select {
		case <-time.After(opts.APIFault503):
		case <-done:
		}
		st.f.API.ClearFaults()
	}()
	return func() {
		close(done)
		<-stopped // a fault outlasting the storm must not reach the next one
	}
}

// faultEnd is when the scenario's timed fault ended, since the storm
// started: its length after the fleet's first request at the CA.
func (st *storm) faultEnd(events []Event) time.Duration {
	d := st.opts.APIFault503
	if st.opts.CAFault != nil {
		d = st.opts.CAFaultFor
	}
	if d <= 0 || len(events) == 0 {
		return 0
	}
	first := events[0].At
	for _, e := range events {
		first = min(first, e.At)
	}
	return first + d
}

// firstRunEnded counts a node's first run out; after the last one a
// CAFaultUntilFirstRuns fault ends.
func (st *storm) firstRunEnded() {
	if st.firstLeft.Add(-1) == 0 && st.opts.CAFault != nil && st.opts.CAFaultUntilFirstRuns {
		st.f.Proxy.SetFault(nil)
		st.res.FaultEnd = time.Since(st.t0)
	}
}

// node runs node i the way provision.service would: started at its place
// in the spread, started again after a failure RestartSec later (at this
// node's phase within systemd's timer accuracy), until it is done, exits
// 2 or 3 (RestartPreventExitStatus=2 3), or has been started MaxStarts
// times. Each run gets an INVOCATION_ID of its own, as systemd gives every
// start of a unit, and the node's root (its state_dir) is kept across its
// runs: exactly what provision reads to know a run is a restart (the
// kernel's boot ID is not there, as it is hidden from the unit).
func (st *storm) node(ctx context.Context, i int) {
	opts, nr := st.opts, &st.res.Nodes[i]
	first := sync.OnceFunc(st.firstRunEnded)
	defer first()
	at := time.Duration(0)
	if opts.Nodes > 1 {
		at = opts.Spread * time.Duration(i) / time.Duration(opts.Nodes-1)
	}
	phase := randomPhase(opts.RestartAccuracy)
	for nr.Starts < opts.MaxStarts {
		select {
		case <-time.After(time.Until(st.t0.Add(at))):
		case <-ctx.Done():
			return
		}
		nr.Starts++
		run := Run{Due: at, Start: time.Since(st.t0)}
		runBootstrap(ctx, opts.Binary, st.cfgs[i], st.roots[i], &run)
		run.End = time.Since(st.t0)
		nr.Runs = append(nr.Runs, run)
		first()
		if run.Code == 0 {
			nr.Done, nr.ToDone, nr.DoneAt = true, run.End-nr.Runs[0].Start, run.End
			return
		}
		if run.Code == 2 || run.Code == 3 {
			return
		}
		at = restartAt(run.End, opts.Restart, opts.RestartAccuracy, phase)
	}
}

// runBootstrap runs one bootstrap as the unit's process and fills in run
// its exit code, why it failed (the JSON report's failed_check and
// summary), its CPU time, and the restart-splay wait it logged.
func runBootstrap(ctx context.Context, bin, cfg, root string, run *Run) {
	cmd := exec.CommandContext(ctx, bin, "bootstrap", "--config", cfg, "--root", root, "--format", "json")
	cmd.Env = unitEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if cmd.ProcessState != nil {
		run.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	run.Splay, run.Waited = splayWait(stderr.String())
	var rep struct {
		OK          bool   `json:"ok"`
		FailedCheck string `json:"failed_check"`
		Summary     string `json:"summary"`
	}
	json.Unmarshal(out, &rep)
	run.Why = rep.FailedCheck + ": " + rep.Summary
	var ee *exec.ExitError
	switch {
	case err == nil && rep.OK:
		run.Code, run.Why = 0, ""
	case err == nil:
		run.Code, run.Why = -2, "exit 0 without an ok report" // never done
	case errors.As(err, &ee) && ee.Exited():
		run.Code = ee.ExitCode()
	default:
		run.Code, run.Why = -1, err.Error()
	}
}

// splayWait finds the restart-splay wait in a run's text log (stderr):
// the line with step=restart-splay and status=wait, and its wait=.
func splayWait(log string) (time.Duration, bool) {
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "step=restart-splay") || !strings.Contains(l, "status=wait") {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "wait="); ok {
				d, _ := time.ParseDuration(v)
				return d, true
			}
		}
		return 0, true
	}
	return 0, false
}

// unitEnv is the environment systemd gives one start of provision.service,
// as far as provision reads it: a fresh INVOCATION_ID. The harness's own
// INVOCATION_ID and SYSTEMD_EXEC_PID (when it runs under a service) are
// not passed on; systemd's SYSTEMD_EXEC_PID for the unit would name the
// child, which is only known once it started, and provision accepts its
// absence (systemd before 248).
func unitEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "INVOCATION_ID=") && !strings.HasPrefix(kv, "SYSTEMD_EXEC_PID=") {
			env = append(env, kv)
		}
	}
	id := make([]byte, 16)
	crand.Read(id)
	return append(env, "INVOCATION_ID="+hex.EncodeToString(id))
}

// RemoveRoots deletes the node roots of a finished storm.
func RemoveRoots(work string) { os.RemoveAll(work) }
