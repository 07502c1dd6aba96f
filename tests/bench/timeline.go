package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gpuaas/provision/tests/fleet"
)

// timeline runs n cold bootstraps with debug logs and prints, for each log
// line, the median time since the process was started, and the median of
// the gaps between consecutive lines: where a cold bootstrap's wall time
// goes, without strace's cost per system call. "main" is when the Go
// runtime reached main.main (GODEBUG=inittrace's last init, a run of its
// own), "exit" when the bench saw the process end.
func timeline(prov string, fl *fleet.Fleet, work string, n int, out io.Writer) error {
	bins := []string{prov}
	if baseline != "" {
		bins = append(bins, baseline)
	}
	tls := make([]*lineTimes, len(bins))
	for k := range bins {
		tls[k] = &lineTimes{offsets: map[string][]time.Duration{}, seen: map[string]bool{}}
	}
	for i := 0; i < n; i++ {
		for k, bin := range bins {
			if err := tls[k].run(bin, fl, work, fmt.Sprintf("timeline-%d-%04d", k, i), i%2 == 1); err != nil {
				return err
			}
		}
	}
	fmt.Fprintf(out, "cold bootstrap timeline, %d runs each (%d more with GODEBUG=inittrace=1 for \"main\"), median ms since exec, then since the line before:\n", (n+1)/2, n/2)
	for k, bin := range bins {
		fmt.Fprintf(out, "\n%s:\n", map[bool]string{true: "this build", false: "baseline " + bin}[k == 0])
		tls[k].print(out)
	}
	return nil
}

// lineTimes is one binary's log lines and when each came, run by run.
type lineTimes struct {
	offsets map[string][]time.Duration
	order   []string
	seen    map[string]bool
}

func (t *lineTimes) add(label string, d time.Duration) {
	if !t.seen[label] {
		t.seen[label] = true
		t.order = append(t.order, label)
	}
	t.offsets[label] = append(t.offsets[label], d)
}

// run makes one cold bootstrap of bin on a fresh node, and records when
// each log line came; with inittrace, only when main.main ran.
func (t *lineTimes) run(bin string, fl *fleet.Fleet, work, id string, inittrace bool) error {
	root := filepath.Join(work, "nodes", id)
	files, err := node(fl, root, id)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "bootstrap", "--config", files.ConfigArg, "--root", root,
		"--format", "json", "--log-format", "json", "--log-level", "debug")
	if inittrace {
		cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	err = cmd.Run()
	end := time.Since(t0)
	if err != nil {
		return fmt.Errorf("cold bootstrap: %v\n%s%s", err, stdout.Bytes(), stderr.Bytes())
	}
	if inittrace {
		if d, ok := lastInit(stderr.Bytes()); ok {
			t.add("main", d)
		}
		return nil
	}
	t.add("exit", end)
	counts := map[string]int{}
	sc := bufio.NewScanner(&stderr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		ts, _ := l["time"].(string)
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			continue
		}
		label := fmt.Sprint(l["msg"])
		for _, k := range []string{"step", "check", "status"} {
			if v, ok := l[k]; ok {
				label += " " + fmt.Sprint(v)
			}
		}
		counts[label]++
		if counts[label] > 1 {
			label += " #" + strconv.Itoa(counts[label])
		}
		t.add(label, at.Sub(t0))
	}
	return nil
}

func (t *lineTimes) print(out io.Writer) {
	type row struct {
		label string
		at    time.Duration
	}
	var rows []row
	for _, l := range t.order {
		rows = append(rows, row{l, medianDur(t.offsets[l])})
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].at < rows[j].at })
	var prev time.Duration
	for _, r := range rows {
		fmt.Fprintf(out, "  %7.2f  +%5.2f  %s\n", ms64(r.at), ms64(r.at-prev), r.label)
		prev = r.at
	}
}

// lastInit is the start of the last package init GODEBUG=inittrace
// printed plus its clock: when main.main was about to run.
func lastInit(stderr []byte) (time.Duration, bool) {
	var last time.Duration
	ok := false
	for _, line := range strings.Split(string(stderr), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[0] != "init" || !strings.HasPrefix(f[2], "@") {
			continue
		}
		at, err1 := strconv.ParseFloat(strings.TrimPrefix(f[2], "@"), 64)
		clock, err2 := strconv.ParseFloat(f[4], 64)
		if err1 != nil || err2 != nil {
			continue
		}
		last, ok = time.Duration((at+clock)*float64(time.Millisecond)), true
	}
	return last, ok
}

func medianDur(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms64(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
