// Command bench measures what a node pays, whole processes included,
// against the lab's real control plane (step-ca in-process, a real nginx in
// front of the node API, the API's long-poll hold 0 and wait_timeout 0s so
// the proof is one round trip). Round by round, interleaved, it runs:
//
//   - floor: tests/bench/floor, the unavoidable steps and nothing else;
//   - cold: provision bootstrap on a fresh root with a fresh token;
//   - warm: provision bootstrap again on that root (it re-proves);
//   - verify: provision verify on that healthy root;
//   - step+curl: `step ca certificate` + `curl --cert`, when step is on PATH;
//   - with -tpm, cold, warm and verify again with the node key inside a
//     software TPM (key.store = "tpm", tpm.go).
//
// It prints medians, min/max, each ratio to the floor, provision's own
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
	flag.StringVar(&baseline, "baseline", "", "also run this provision `binary` (an older build) as cold/warm/verify (baseline), interleaved, for before/after")
	flag.IntVar(&signsN, "signs", 0, "instead of the bench, measure step-ca's sign throughput with this many signs")
	flag.IntVar(&signWorkers, "sign-clients", 16, "concurrent clients for -signs")
	flag.BoolVar(&signNewConns, "sign-new-conns", false, "with -signs: a new TLS connection per sign, as a node makes")
	useTPM := flag.Bool("tpm", false, "also run cold, warm and verify with the node key inside a software TPM (swtpm)")
	flag.StringVar(&traceCold, "strace", "", "instead of measuring, run one cold bootstrap under strace -f -tt -T -e trace=`SET` and print it (where the time goes)")
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
	work, err := os.MkdirTemp("", "provision-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	prov, floor, err := build(work)
	if err != nil {
		return err
	}
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
	if signsN > 0 {
		return signThroughput(fl, signsN, signWorkers, signNewConns, out)
	}
	b := &bench{work: work, prov: prov, floor: floor, fl: fl, res: map[string][]sample{}}
	b.stepBin, _ = exec.LookPath("step")
	b.curlBin, _ = exec.LookPath("curl")
	printHeader(out, rounds, fl, st.Size())
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
	work, prov, floor string
	fl                *fleet.Fleet
	// stepBin and curlBin are "" when the program is not on PATH.
	stepBin, curlBin string
	res              map[string][]sample
}

// printHeader prints the run's settings, the control plane and the size of
// the binary.
func printHeader(out io.Writer, rounds int, fl *fleet.Fleet, provSize int64) {
	fmt.Fprintf(out, "bench: %d rounds, GOMAXPROCS %d, %s/%s, %s\n", rounds, runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Fprintf(out, "control plane: step-ca %s, nginx %s -> node API (wait_timeout 0s, hold 0)\n", fl.CP.CA.Addr(), fl.Ingress.Addr)
	fmt.Fprintf(out, "provision stripped (-ldflags='-s -w' -trimpath): %.1f MB\n\n", float64(provSize)/1e6)
}

// names are the contenders in the order the table lists them.
func (b *bench) names() []string {
	names := []string{"floor", "cold", "warm", "verify"}
	if b.curlBin != "" {
		names = append(names, "curl-poll")
	}
	if baseline != "" {
		names = append(names, "cold (baseline)", "warm (baseline)", "verify (baseline)")
	}
	if benchTPM != nil {
		names = append(names, "cold (tpm)", "warm (tpm)", "verify (tpm)")
	}
	if b.stepBin != "" && b.curlBin != "" {
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
	files, _, err := b.fl.Node(root, id, "60s")
	if err != nil {
		return err
	}
	if i%2 == 0 {
		if err := b.floorRun(i); err != nil {
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
	if b.stepBin != "" && b.curlBin != "" {
		s, err := stepCurl(b.stepBin, b.curlBin, b.fl, b.work, i)
		if err != nil {
			return err
		}
		b.res["step+curl"] = append(b.res["step+curl"], s)
	}
	if i%2 == 1 {
		return b.floorRun(i)
	}
	return nil
}

// floorRun runs the floor program once, with a token of its own.
func (b *bench) floorRun(i int) error {
	fid := fmt.Sprintf("floor-%04d", i)
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
	s, _, err := runProc(b.floor, "-ca", cfg.CA.URL, "-fp", cfg.CA.Fingerprint, "-token", tf,
		"-api", cfg.NodeAPI.URL+strings.ReplaceAll(cfg.NodeAPI.WaitPath, "{node_id}", fid)+"?timeout=0",
		"-dir", filepath.Join(b.work, "floor-nodes", fid))
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	b.res["floor"] = append(b.res["floor"], s)
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
	bfiles, _, err := b.fl.Node(broot, bid, "60s")
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
	floorMed := median(b.res["floor"])
	fmt.Fprintf(out, "%-17s %9s %9s %9s %9s %12s %10s\n", "", "median", "min", "max", "x floor", "peak RSS", "CPU")
	for _, n := range b.names() {
		ss := b.res[n]
		if len(ss) == 0 {
			continue
		}
		mn, mx := minmax(ss)
		fmt.Fprintf(out, "%-17s %9s %9s %9s %9.2f %9.1f MB %10s\n", n, ms(median(ss)), ms(mn), ms(mx),
			float64(median(ss))/float64(floorMed), float64(rss[n])/1024, ms(medianCPU(ss)))
	}
	if b.stepBin == "" || b.curlBin == "" {
		fmt.Fprintln(out, "step+curl  skipped: no step binary on PATH (the operator's script: step ca certificate + curl --cert)")
	}
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

// build builds provision as shipped (stripped) and the floor the same way.
func build(dir string) (prov, floor string, err error) {
	rssHelper = filepath.Join(dir, "rss")
	root, err := testenv.ModuleRoot()
	if err != nil {
		return "", "", err
	}
	prov, floor = filepath.Join(dir, "provision"), filepath.Join(dir, "floor")
	for _, b := range [][2]string{{prov, "./cmd/provision"}, {floor, "./tests/bench/floor"}, {rssHelper, "./tests/bench/rss"}} {
		cmd := exec.Command(testenv.GoTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", b[0], b[1])
		cmd.Dir = root
		if o, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %v\n%s", b[1], err, o)
		}
	}
	return prov, floor, nil
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

func stepCurl(stepBin, curlBin string, fl *fleet.Fleet, work string, i int) (sample, error) {
	id := fmt.Sprintf("step-%04d", i)
	tok, err := fl.CP.Token(id)
	if err != nil {
		return sample{}, err
	}
	cfg := fl.NodeConfig(id, "")
	dir := filepath.Join(work, "step", id)
	os.MkdirAll(dir, 0o700)
	rootPEM := filepath.Join(dir, "root.pem")
	os.WriteFile(rootPEM, fl.CP.CA.RootPEM(), 0o644)
	caPort := strconv.Itoa(fl.CP.CA.Port())
	apiPort := strconv.Itoa(fl.Ingress.Port)
	t0 := time.Now()
	cmd := exec.Command(stepBin, "ca", "certificate", id, filepath.Join(dir, "crt"), filepath.Join(dir, "key"),
		"--token", tok, "--ca-url", cfg.CA.URL, "--root", rootPEM, "--force")
	cmd.Env = append(os.Environ(), "STEPPATH="+dir)
	if o, err := cmd.CombinedOutput(); err != nil {
		return sample{}, fmt.Errorf("step ca certificate: %v\n%s", err, o)
	}
	_ = caPort
	url := cfg.NodeAPI.URL + strings.ReplaceAll(cfg.NodeAPI.WaitPath, "{node_id}", id) + "?timeout=0"
	c := exec.Command(curlBin, "-fsS", "--cacert", rootPEM, "--cert", filepath.Join(dir, "crt"), "--key", filepath.Join(dir, "key"),
		"--resolve", controlplane.DefaultAPIHostname+":"+apiPort+":127.0.0.1", url)
	if o, err := c.CombinedOutput(); err != nil {
		return sample{}, fmt.Errorf("curl: %v\n%s", err, o)
	}
	return sample{d: time.Since(t0)}, nil
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
	files, _, err := fl.Node(root, "fsync-count", "60s")
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

var (
	baseline  string
	traceCold string
	signsN    int
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
	files, _, err := fl.Node(root, "trace", "60s")
	if err != nil {
		return err
	}
	outFile := filepath.Join(work, "strace.txt")
	args := []string{"-f", "-tt", "-T", "-o", outFile, "-e", "trace=" + traceCold, prov}
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
