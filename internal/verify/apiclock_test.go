package verify

import (
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/probe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/system"
)

// TestTasksWaitWarnsOnAPIClockSkew: the API's Date header is the clock
// check's second witness; a skew beyond MaxSkew warns without failing. It
// is judged at the instant the answer arrived, not later: a tasks/wait
// answer that came an hour before the check compares as it came.
func TestTasksWaitWarnsOnAPIClockSkew(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	// The check itself runs an hour after the answer came.
	e := &observe.Env{Host: &system.Host{Root: "/", Now: func() time.Time { return now.Add(time.Hour) }}}
	for _, tt := range []struct {
		name string
		date time.Time
		want report.Status
	}{
		{"agrees", now.Add(-2 * time.Second), report.Pass},
		{"no Date header", time.Time{}, report.Pass},
		{"API 5 minutes ahead", now.Add(5 * time.Minute), report.Warn},
		{"API 2 minutes behind", now.Add(-2 * time.Minute), report.Warn},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := tasksWaitPass("tasks/wait answered 204", &probe.Result{Status: 204, Date: tt.date, DateAt: now}, e)
			if o.Status != tt.want {
				t.Fatalf("status %s (%s), want %s", o.Status, o.Message, tt.want)
			}
			if tt.want == report.Warn && o.Remedy == "" {
				t.Fatal("a warning without a remedy")
			}
		})
	}
}
