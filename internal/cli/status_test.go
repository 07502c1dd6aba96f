package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/status"
)

// TestPrintStatusText: status for a person says the state once ("ok: ok:"
// before issue 33), says when renewal is due (not "renewed from" a time to
// come), and no line ends in spaces (an empty verdict reason list, a
// renewal without an error, a metrics directory without files).
func TestPrintStatusText(t *testing.T) {
	due := time.Now().Add(240 * time.Hour).UTC()
	n := &status.Node{NodeID: "gpu-1", State: status.OK, Summary: report.Healthy("42", due.Add(120*time.Hour), due), Attention: []string{},
		Credentials: &status.Credentials{PKIDir: "/var/lib/provision/pki", Present: true, Serial: "42", Verdict: "keep", DueAt: due},
		Renew:       &status.Renew{LastResult: "not-due"}, Metrics: status.Metrics{TextfileDir: "/var/lib/node_exporter"}}
	var b bytes.Buffer
	printStatus(&b, n, 0, false)
	out := b.String()
	for i, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if strings.TrimRight(l, " \t") != l {
			t.Errorf("line %d ends in spaces: %q", i+1, l)
		}
	}
	last := out[strings.LastIndex(strings.TrimSuffix(out, "\n"), "\n")+1:]
	if strings.Contains(last, "ok: ok:") || !strings.HasPrefix(last, "provision status: ok: certificate serial 42") || !strings.Contains(last, "renewal due from "+due.Format(time.RFC3339)) {
		t.Errorf("last line %q: want the state once and when renewal is due", last)
	}
}
