// Command bench measures what a node pays, whole processes included,
// against the lab's real control plane (step-ca in-process, a real nginx in
// front of the node API, the API's long-poll hold 0 and wait_timeout 0s so
// the proof is one round trip). Round by round, interleaved, it runs:
//
//   - floor: tests/bench/floor, the unavoidable steps and nothing else,
//     built as a plain module (no build tags) with step's ca package linked,
//     as provision must; floor (lean) is the same program built with
//     provision's tags (cmd/provision/build-tags), so the cost of linking
//     that package stays visible;
//   - cold: provision bootstrap on a fresh root with a fresh token;
//   - warm: provision bootstrap again on that root (it re-proves);
//   - verify: provision verify on that healthy root;
//   - step+curl: `step ca certificate` + `curl --cert`, the operator's
//     script, with the step CLI built from its source (or -step BIN); skipped
//     with the reason when it cannot be built or run.
//   - with -tpm, cold, warm and verify again with the node key inside a
//     software TPM (key.store = "tpm", tpm.go).
//
// Every binary is built as the .deb ships provision: CGO_ENABLED=0,
// -trimpath, -ldflags=-s -w. It prints medians, min/max, each ratio to the
// floor and to the lean floor, provision's own
// per-step time from the JSON report's steps[], the stripped binary size
// and the peak RSS of bootstrap and verify.
//
//	go run ./tests/bench               # 15 rounds
//	go run ./tests/bench -rounds 40
//
// Nothing leaves loopback; everything is written under a temporary directory.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gpuaas/provision/internal/testenv"
	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/fleet"
)

func main() {
	rounds := flag.Int("rounds", 15, "rounds (each runs every contender once)")
	flag.StringVar(&workParent, "work", "/var/tmp", "the `directory` the bench's nodes are written under (see -help's note on /tmp)")
	flag.StringVar(&baseline, "baseline", "", "also run this provision `binary` (an older build) as cold/warm/verify (baseline), interleaved, for before/after")
	flag.IntVar(&signsN, "signs", 0, "instead of the bench, measure step-ca's sign throughput with this many signs")
	flag.IntVar(&signWorkers, "sign-clients", 16, "concurrent clients for -signs")
	flag.BoolVar(&signNewConns, "sign-new-conns", false, "with -signs: a new TLS connection per sign, as a node makes")
	flag.StringVar(&stepFlag, "step", "", "the step CLI `binary` for step+curl (default: build step "+stepVersion+" from its module source, once, into the user cache directory)")
	useTPM := flag.Bool("tpm", false, "also run cold, warm and verify with the node key inside a software TPM (swtpm)")
	flag.StringVar(&traceCold, "strace", "", "instead of measuring, run one cold bootstrap under strace -f -y -tt -T -e trace=`SET` and print it (where the time goes)")
	flag.IntVar(&timelineN, "timeline", 0, "instead of measuring, run this many cold bootstraps with debug logs and print the median time of each log line since exec (where the time goes)")
	flag.Parse()
	log.SetOutput(io.Discard) // step-ca's own start-up lines
	stop := func() {}
	if *useTPM {
		var err error
		if stop, err = startTPM(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
	err := run(*rounds, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type sample struct {
	d     time.Duration
	cpu   time.Duration // user + system of the process
	rssKB int64
	steps map[string]float64
}

func run(rounds int, out io.Writer) error {
	if rounds < 1 || rounds > 1000 {
		return errors.New("-rounds must be 1-1000")
	}
	if _, err := testenv.LookProgram("nginx"); err != nil {
		return fmt.Errorf("nginx is needed (Debian package nginx): %w", err)
	}
	work, err := os.MkdirTemp(workParent, "provision-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	inodeCost, err := createCost(work)
	if err != nil {
		return err
	}
	bins, err := build(work)
	if err != nil {
		return err
	}
	prov := bins.prov
	st, err := os.Stat(prov)
	if err != nil {
		return err
	}
	fl, err := fleet.Start(fleet.Options{Dir: filepath.Join(work, "fleet")})
	if err != nil {
		return err
	}
	defer fl.Close()
	if traceCold != "" {
		return straceOne(prov, fl, work, out)
	}
	if timelineN > 0 {
		return timeline(prov, fl, work, timelineN, out)
	}
	if signsN > 0 {
		return signThroughput(fl, signsN, signWorkers, signNewConns, out)
	}
	b := &bench{work: work, prov: prov, floor: bins.floor, leanFloor: bins.leanFloor, fl: fl, res: map[string][]sample{}}
	b.curlBin, _ = exec.LookPath("curl")
	b.stepSkip = b.setupStep()
	printHeader(out, rounds, fl, st.Size())
	fmt.Fprintf(out, "nodes under %s (creating a file there: %s, median of 20)\n\n", work, inodeCost)
	for i := 0; i < rounds; i++ {
		if err := b.round(i); err != nil {
			return err
		}
	}
	rss, err := b.peakRSS(rounds)
	if err != nil {
		return err
	}
	b.report(out, rss)
	return nil
}

// bench is one run's contenders and the samples they gave, by name.
type bench struct {
	work, prov, floor, leanFloor string
	fl                           *fleet.Fleet
	// curlBin is "" when curl is not on PATH; stepBin is "" when step+curl
	// is skipped, for the reason stepSkip gives.
	stepBin, curlBin, stepSkip string
	// stepNS runs step+curl with the control plane's names in /etc/hosts.
	stepNS *hostsNS
	res    map[string][]sample
}

// setupStep finds or builds the step CLI and the namespace it runs in; it
// returns why step+curl is skipped, or "".
func (b *bench) setupStep() string {
	if b.curlBin == "" {
		return "no curl on PATH"
	}
	bin, err := stepBinary(stepFlag)
	if err != nil {
		return err.Error()
	}
	if b.stepNS, err = newHostsNS(b.work); err != nil {
		return "step must resolve the CA's hostname, given in /etc/hosts in a private mount namespace: " + err.Error()
	}
	b.stepBin = bin
	return ""
}

// printHeader prints the run's settings, the control plane and the size of
// the binary.
func printHeader(out io.Writer, rounds int, fl *fleet.Fleet, provSize int64) {
	fmt.Fprintf(out, "bench: %d rounds, GOMAXPROCS %d, %s/%s, %s\n", rounds, runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Fprintf(out, "control plane: step-ca %s, nginx %s -> node API (wait_timeout 0s, hold 0)\n", fl.CP.CA.Addr(), fl.Ingress.Addr)
	fmt.Fprintf(out, "provision as shipped (CGO_ENABLED=0 -trimpath -ldflags='-s -w' -tags %s): %.1f MB\n", tagList(), float64(provSize)/1e6)
	fmt.Fprintf(out, "load average at the start: %s\n", loadAvg())
}

func tagList() string {
	tags, _ := testenv.NodeTags()
	return strings.Join(tags, ",")
}

// loadAvg is /proc/loadavg's 1, 5 and 15 minute figures: the machine is
// shared, and the numbers move with other work.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// names are the contenders in the order the table lists them.
func (b *bench) names() []string {
	names := []string{"floor", "floor (lean)", "cold", "warm", "verify"}
	if b.curlBin != "" {
		names = append(names, "curl-poll")
	}
	if baseline != "" {
		names = append(names, "cold (baseline)", "warm (baseline)", "verify (baseline)")
	}
	if benchTPM != nil {
		names = append(names, "cold (tpm)", "warm (tpm)", "verify (tpm)")
	}
	if b.stepBin != "" {
		names = append(names, "step+curl")
	}
	return names
}

// round runs every contender once, on a fresh node. The floor runs first
// in even rounds and last in odd ones, so neither side always gets the
// warmer caches.
func (b *bench) round(i int) error {
	id := fmt.Sprintf("bench-%04d", i)
	root := filepath.Join(b.work, "nodes", id)
	files, err := node(b.fl, root, id)
	if err != nil {
		return err
	}
	if i%2 == 0 {
		if err := b.floors(i); err != nil {
			return err
		}
	}
	args := []string{"--config", files.ConfigArg, "--root", root, "--format", "json"}
	if err := b.provision(provisionRuns, b.prov, args); err != nil {
		return err
	}
	if baseline != "" {
		if err := b.runBaseline(i); err != nil {
			return err
		}
	}
	if b.curlBin != "" {
		if err := b.curlPoll(id, files.PKIDir); err != nil {
			return err
		}
	}
	if benchTPM != nil {
		if err := b.tpmRound(i); err != nil {
			return err
		}
	}
	if b.stepBin != "" && !measureRSS {
		s, err := b.stepCurl(i)
		if err != nil {
			return err
		}
		b.res["step+curl"] = append(b.res["step+curl"], s)
	}
	if i%2 == 1 {
		return b.floors(i)
	}
	return nil
}

// floors runs the floor and the lean floor once each, in an order that
// alternates every other round.
func (b *bench) floors(i int) error {
	runs := [][2]string{{"floor", b.floor}, {"floor (lean)", b.leanFloor}}
	if i%4 >= 2 {
		runs[0], runs[1] = runs[1], runs[0]
	}
	for _, r := range runs {
		if err := b.floorRun(i, r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

// floorRun runs a floor program once, with a token of its own.
func (b *bench) floorRun(i int, name, bin string) error {
	fid := fmt.Sprintf("floor-%04d", i)
	if bin == b.leanFloor {
		fid = fmt.Sprintf("leanfloor-%04d", i)
	}
	tok, err := b.fl.CP.Token(fid)
	if err != nil {
		return err
	}
	tf := filepath.Join(b.work, "floor-nodes", fid+".token")
	os.MkdirAll(filepath.Dir(tf), 0o700)
	if err := os.WriteFile(tf, []byte(tok), 0o600); err != nil {
		return err
	}
	cfg := b.fl.NodeConfig(fid, "")
	s, _, err := runProc(bin, "-ca", cfg.CA.URL, "-fp", cfg.CA.Fingerprint, "-token", tf,
		"-api", cfg.NodeAPI.URL+strings.ReplaceAll(cfg.NodeAPI.WaitPath, "{node_id}", fid)+"?timeout=0",
		"-dir", filepath.Join(b.work, "floor-nodes", fid))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	b.res[name] = append(b.res[name], s)
	return nil
}

// provisionRun is one provision process of a round: its contender name,
// its subcommand and how its failure is reported.
type provisionRun struct{ name, cmd, failure string }

// provisionRuns and baselineRuns are a node's three provision processes,
// in order: a cold bootstrap, a warm one on the same root, then verify.
var (
	provisionRuns = []provisionRun{
		{"cold", "bootstrap", "provision bootstrap (cold)"},
		{"warm", "bootstrap", "provision bootstrap (warm)"},
		{"verify", "verify", "provision verify (verify)"},
	}
	baselineRuns = []provisionRun{
		{"cold (baseline)", "bootstrap", "baseline cold (baseline)"},
		{"warm (baseline)", "bootstrap", "baseline warm (baseline)"},
		{"verify (baseline)", "verify", "baseline verify (baseline)"},
	}
)

// provision runs bin for each of runs with args, recording the process
// and the per-step times of its report.
func (b *bench) provision(runs []provisionRun, bin string, args []string) error {
	for _, c := range runs {
		s, stdout, err := runProc(bin, append([]string{c.cmd}, args...)...)
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", c.failure, err, stdout)
		}
		s.steps = stepTimes(stdout)
		b.res[c.name] = append(b.res[c.name], s)
	}
	return nil
}

// runBaseline runs the -baseline binary's cold, warm and verify on a node of
// its own.
func (b *bench) runBaseline(i int) error {
	bid := fmt.Sprintf("base-%04d", i)
	broot := filepath.Join(b.work, "nodes", bid)
	bfiles, err := node(b.fl, broot, bid)
	if err != nil {
		return err
	}
	bargs := []string{"--config", bfiles.ConfigArg, "--root", broot, "--format", "json"}
	return b.provision(baselineRuns, baseline, bargs)
}

// curlPoll is one tasks/wait round trip with the node's own files, a
// process like verify: what verify is compared with.
func (b *bench) curlPoll(id, pki string) error {
	url := b.fl.NodeConfig(id, "").NodeAPI.URL + strings.ReplaceAll(controlplane.WaitPath, "{node_id}", id) + "?timeout=0"
	s, out, err := runProc(b.curlBin, "-fsS", "--cacert", filepath.Join(pki, "ca.pem"), "--cert", filepath.Join(pki, "cert.pem"),
		"--key", filepath.Join(pki, "key.pem"), "--resolve", controlplane.DefaultAPIHostname+":"+strconv.Itoa(b.fl.Ingress.Port)+":127.0.0.1", url)
	if err != nil {
		return fmt.Errorf("curl: %w\n%s", err, out)
	}
	b.res["curl-poll"] = append(b.res["curl-poll"], s)
	return nil
}

// peakRSS runs one more round, untimed, each process under the rss helper,
// and returns each contender's peak RSS in KB. The timed samples are left
// as they were.
func (b *bench) peakRSS(round int) (map[string]int64, error) {
	measureRSS = true
	saved := b.res
	b.res = map[string][]sample{}
	if err := b.round(round); err != nil {
		return nil, err
	}
	rss := map[string]int64{}
	for n, ss := range b.res {
		rss[n] = maxRSS(ss)
	}
	b.res = saved
	measureRSS = false
	return rss, nil
}

// report prints the table of contenders against the floor, provision's
// per-step medians and the fsync counts.
func (b *bench) report(out io.Writer, rss map[string]int64) {
	floorMed, leanMed := median(b.res["floor"]), median(b.res["floor (lean)"])
	fmt.Fprintf(out, "%-17s %9s %9s %9s %8s %8s %12s %10s\n", "", "median", "min", "max", "x floor", "x lean", "peak RSS", "CPU")
	for _, n := range b.names() {
		ss := b.res[n]
		if len(ss) == 0 {
			continue
		}
		mn, mx := minmax(ss)
		peak := "n/a" // step+curl is two processes: not measured
		if rss[n] > 0 {
			peak = fmt.Sprintf("%.1f MB", float64(rss[n])/1024)
		}
		fmt.Fprintf(out, "%-17s %9s %9s %9s %8.2f %8.2f %12s %10s\n", n, ms(median(ss)), ms(mn), ms(mx),
			ratio(median(ss), floorMed), ratio(median(ss), leanMed), peak, ms(medianCPU(ss)))
	}
	if b.stepSkip != "" {
		fmt.Fprintf(out, "step+curl  SKIPPED (the operator's script: step ca certificate + curl --cert): %s\n", b.stepSkip)
	}
	b.verdict(out)
	fmt.Fprintf(out, "load average at the end: %s\n", loadAvg())
	for _, n := range []string{"cold", "warm", "cold (baseline)", "cold (tpm)"} {
		if len(b.res[n]) == 0 {
			continue
		}
		fmt.Fprintf(out, "\nprovision bootstrap (%s), median per step from the report's steps[]:\n", n)
		printSteps(out, b.res[n])
	}
	fmt.Fprintln(out, "\nverify, median per check from the report's checks[]:")
	printSteps(out, b.res["verify"])
	if cnt, ok := fsyncs(b.prov, b.fl, b.work); ok {
		fmt.Fprintf(out, "\nfsync+fdatasync calls (one untimed run each, counted by strace -f): %s\n", cnt)
	} else {
		fmt.Fprintln(out, "\nfsync counts skipped: strace is not on PATH (docs/performance.md lists them from the code path)")
	}
}

// verdict prints cold bootstrap's ratios against the issue-34 goals: within
// 1.25x the floor, at most 0.6x the operator's script.
func (b *bench) verdict(out io.Writer) {
	for _, n := range []string{"cold", "cold (baseline)"} {
		ss := b.res[n]
		if len(ss) == 0 {
			continue
		}
		c, cpu := median(ss), medianCPU(ss)
		fl, lean, st := b.res["floor"], b.res["floor (lean)"], b.res["step+curl"]
		fmt.Fprintf(out, "%s: %.2fx the floor (goal <= 1.25), %.2fx the lean floor", n, ratio(c, median(fl)), ratio(c, median(lean)))
		if len(st) > 0 {
			fmt.Fprintf(out, ", %.2fx step+curl (goal <= 0.60)", ratio(c, median(st)))
		}
		fmt.Fprintln(out)
		// Other work on the machine lengthens every wait for a core or the
		// disk: CPU time moves less, and each contender's fastest run is
		// the one least disturbed.
		fmt.Fprintf(out, "  CPU %.2fx the floor's, %.2fx the lean floor's", ratio(cpu, medianCPU(fl)), ratio(cpu, medianCPU(lean)))
		if len(st) > 0 {
			fmt.Fprintf(out, ", %.2fx step+curl's", ratio(cpu, medianCPU(st)))
		}
		fmt.Fprintf(out, "; fastest runs %.2fx the floor's, %.2fx the lean floor's", ratio(fastest(ss), fastest(fl)), ratio(fastest(ss), fastest(lean)))
		if len(st) > 0 {
			fmt.Fprintf(out, ", %.2fx step+curl's", ratio(fastest(ss), fastest(st)))
		}
		fmt.Fprintln(out)
	}
}

func fastest(ss []sample) time.Duration {
	if len(ss) == 0 {
		return 0
	}
	mn, _ := minmax(ss)
	return mn
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// binaries are the programs a run measures, built as provision ships.
type binaries struct{ prov, floor, leanFloor string }

// build builds provision as shipped (static, stripped, its build tags),
// the floor the same way without the tags (a plain module) and with them
// (the lean floor), and the rss helper.
func build(dir string) (binaries, error) {
	rssHelper = filepath.Join(dir, "rss")
	bins := binaries{filepath.Join(dir, "provision"), filepath.Join(dir, "floor"), filepath.Join(dir, "floor-lean")}
	if err := testenv.BuildShipped(bins.prov); err != nil {
		return bins, err
	}
	tags, err := testenv.NodeTags()
	if err != nil {
		return bins, err
	}
	for _, b := range []struct {
		out, pkg string
		tags     []string
	}{{bins.floor, "./tests/bench/floor", nil}, {bins.leanFloor, "./tests/bench/floor", tags}, {rssHelper, "./tests/bench/rss", nil}} {
		if err := testenv.BuildStatic(b.out, b.pkg, b.tags); err != nil {
			return bins, err
		}
	}
	return bins, nil
}

// rssHelper is tests/bench/rss, built next to provision.
var rssHelper string

// measureRSS, when set, makes runProc run the command under rssHelper
// (untimed passes only) and record its peak RSS.
var measureRSS bool

func runProc(bin string, args ...string) (sample, []byte, error) {
	cmd := exec.Command(bin, args...)
	var rssFile string
	if measureRSS {
		f, err := os.CreateTemp("", "bench-rss-")
		if err != nil {
			return sample{}, nil, err
		}
		f.Close()
		rssFile = f.Name()
		defer os.Remove(rssFile)
		cmd = exec.Command(rssHelper, append([]string{"-o", rssFile, "--", bin}, args...)...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	s := sample{d: d}
	if cmd.ProcessState != nil {
		s.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if rssFile != "" {
		b, _ := os.ReadFile(rssFile)
		s.rssKB, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	if err != nil {
		return s, append(stdout.Bytes(), stderr.Bytes()...), fmt.Errorf("%v", err)
	}
	return s, stdout.Bytes(), nil
}

// stepTimes takes bootstrap's steps[] or, for verify, its checks[].
func stepTimes(report []byte) map[string]float64 {
	var r struct {
		Steps []struct {
			Name       string  `json:"name"`
			DurationMS float64 `json:"duration_ms"`
		} `json:"steps"`
		Checks []struct {
			Name       string  `json:"name"`
			DurationMS float64 `json:"duration_ms"`
		} `json:"checks"`
		DurationMS float64 `json:"duration_ms"`
	}
	json.Unmarshal(report, &r)
	m := map[string]float64{"(in-process total)": r.DurationMS}
	for _, s := range r.Steps {
		m[s.Name] += s.DurationMS
	}
	if len(r.Steps) == 0 {
		for _, c := range r.Checks {
			m[c.Name] += c.DurationMS
		}
	}
	return m
}

func printSteps(out io.Writer, ss []sample) {
	var order []string
	seen := map[string]bool{}
	for _, s := range ss {
		for k := range s.steps {
			if !seen[k] {
				seen[k] = true
				order = append(order, k)
			}
		}
	}
	sort.Strings(order)
	for _, k := range order {
		var v []float64
		for _, s := range ss {
			v = append(v, s.steps[k])
		}
		sort.Float64s(v)
		fmt.Fprintf(out, "  %-22s %6.1f ms\n", k, v[len(v)/2])
	}
	fmt.Fprintf(out, "  %-22s %6s (process wall time, median)\n", "(whole process)", ms(median(ss)))
}

// stepCurl is the operator's script on a node with a token and the root
// file: step ca certificate with the token, then one curl --cert of
// tasks/wait with what it wrote. Both run in the namespace whose
// /etc/hosts names the CA; the sample is their wall and CPU time together.
func (b *bench) stepCurl(i int) (sample, error) {
	id := fmt.Sprintf("step-%04d", i)
	tok, err := b.fl.CP.Token(id)
	if err != nil {
		return sample{}, err
	}
	cfg := b.fl.NodeConfig(id, "")
	dir := filepath.Join(b.work, "step", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return sample{}, err
	}
	rootPEM := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(rootPEM, b.fl.CP.CA.RootPEM(), 0o644); err != nil {
		return sample{}, err
	}
	step := exec.Command(b.stepBin, "ca", "certificate", id, filepath.Join(dir, "crt"), filepath.Join(dir, "key"),
		"--token", tok, "--ca-url", cfg.CA.URL, "--root", rootPEM, "--force")
	step.Env = append(os.Environ(), "STEPPATH="+dir)
	url := cfg.NodeAPI.URL + strings.ReplaceAll(cfg.NodeAPI.WaitPath, "{node_id}", id) + "?timeout=0"
	curl := exec.Command(b.curlBin, "-fsS", "--cacert", rootPEM, "--cert", filepath.Join(dir, "crt"), "--key", filepath.Join(dir, "key"), url)
	var s sample
	for _, c := range []*exec.Cmd{step, curl} {
		d, cpu, o, err := b.stepNS.run(c)
		if err != nil {
			return sample{}, fmt.Errorf("%s: %v\n%s", filepath.Base(c.Path), err, o)
		}
		s.d, s.cpu = s.d+d, s.cpu+cpu
	}
	return s, nil
}

var straceCalls = regexp.MustCompile(`(?m)^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync|syncfs|sync_file_range)\s*$`)

// fsyncs counts fsync-family calls of one cold and one warm bootstrap,
// untimed, under strace -f -c. It returns false when strace is missing.
func fsyncs(prov string, fl *fleet.Fleet, work string) (string, bool) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		return "", false
	}
	root := filepath.Join(work, "nodes", "fsync-count")
	files, err := node(fl, root, "fsync-count")
	if err != nil {
		return "", false
	}
	var parts []string
	for _, name := range []string{"cold", "warm"} {
		outFile := filepath.Join(work, "strace-"+name)
		cmd := exec.Command(strace, "-f", "-c", "-o", outFile, "-e", "trace=fsync,fdatasync,syncfs,sync_file_range",
			prov, "bootstrap", "--config", files.ConfigArg, "--root", root, "--format", "json")
		if o, err := cmd.CombinedOutput(); err != nil {
			return fmt.Sprintf("strace run failed: %v %s", err, o), true
		}
		b, _ := os.ReadFile(outFile)
		n := 0
		for _, m := range straceCalls.FindAllStringSubmatch(string(b), -1) {
			c, _ := strconv.Atoi(m[1])
			n += c
		}
		parts = append(parts, fmt.Sprintf("%s bootstrap %d", name, n))
	}
	return strings.Join(parts, ", "), true
}

func median(ss []sample) time.Duration {
	d := make([]time.Duration, len(ss))
	for i, s := range ss {
		d[i] = s.d
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	if len(d) == 0 {
		return 0
	}
	return d[len(d)/2]
}

func medianCPU(ss []sample) time.Duration {
	c := make([]sample, len(ss))
	for i, s := range ss {
		c[i] = sample{d: s.cpu}
	}
	return median(c)
}

func minmax(ss []sample) (time.Duration, time.Duration) {
	mn, mx := ss[0].d, ss[0].d
	for _, s := range ss {
		mn, mx = min(mn, s.d), max(mx, s.d)
	}
	return mn, mx
}

func maxRSS(ss []sample) int64 {
	var m int64
	for _, s := range ss {
		m = max(m, s.rssKB)
	}
	return m
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// node writes a node's root for nodeID under root, as the lab does, and
// the state directory provision.service's StateDirectory= creates before
// provision starts (a node's /var/lib exists; the unit makes
// /var/lib/provision, 0700).
func node(fl *fleet.Fleet, root, nodeID string) (controlplane.NodeFiles, error) {
	files, _, err := fl.Node(root, nodeID, "60s")
	if err != nil {
		return files, err
	}
	state := filepath.Join(root, fl.NodeConfig(nodeID, "").Paths.StateDir)
	return files, os.MkdirAll(state, 0o700)
}

// createCost is the median time to create (and close) a file in dir, of
// 20. On this shared machine /tmp is where every build creates and deletes
// thousands of files a second, and ext4 without a journal passes over
// recently deleted inodes when it allocates one: there a file costs ~0.8 ms
// to create, elsewhere on the same disk ~0.02 ms. A cold bootstrap creates
// 15 files, directories and links, the floor 3, so in /tmp the bench would
// measure /tmp. The default -work is /var/tmp, and the figure is printed.
func createCost(dir string) (time.Duration, error) {
	d := filepath.Join(dir, "create-cost")
	if err := os.Mkdir(d, 0o700); err != nil {
		return 0, err
	}
	defer os.RemoveAll(d)
	ss := make([]sample, 20)
	for i := range ss {
		t0 := time.Now()
		f, err := os.Create(filepath.Join(d, strconv.Itoa(i)))
		if err != nil {
			return 0, err
		}
		ss[i].d = time.Since(t0)
		f.Close()
	}
	return median(ss), nil
}

var (
	workParent string
	baseline   string
	stepFlag   string
	traceCold  string
	timelineN  int
	signsN     int
	// signWorkers is -sign-clients.
	signWorkers  int
	signNewConns bool
)

// straceOne runs one cold bootstrap under strace, for finding where the
// time goes; it measures nothing.
func straceOne(prov string, fl *fleet.Fleet, work string, out io.Writer) error {
	strace, err := exec.LookPath("strace")
	if err != nil {
		return err
	}
	root := filepath.Join(work, "nodes", "trace")
	files, err := node(fl, root, "trace")
	if err != nil {
		return err
	}
	outFile := filepath.Join(work, "strace.txt")
	args := []string{"-f", "-y", "-tt", "-T", "-o", outFile, "-e", "trace=" + traceCold, prov}
	if traceCold == "none" {
		args = []string{prov}
	}
	cmd := exec.Command(strace, append(args, "bootstrap", "--config", files.ConfigArg, "--root", root, "--format", "json", "--log-format", "json", "--log-level", "debug")...)
	o, err := cmd.CombinedOutput()
	b, _ := os.ReadFile(outFile)
	out.Write(b)
	out.Write(o)
	if err != nil {
		return fmt.Errorf("%v\n%s", err, o)
	}
	return nil
}
