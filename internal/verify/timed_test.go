package verify_test

import (
	"context"
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/observe"
	"github.com/gpuaas/provision/internal/report"
	"github.com/gpuaas/provision/internal/verify"
)

// TestRunReportsAStageTime: a check whose answer carries the time of its own
// stage (the probe checks share one exchange) is reported with that time,
// not with how long its Run took; a check without one keeps the runner's.
func TestRunReportsAStageTime(t *testing.T) {
	checks := []verify.Check{
		{Name: "first", Run: func(context.Context, *observe.Env) verify.Answer {
			return verify.Answer{Status: report.Pass, Timed: true, Duration: 1234 * time.Millisecond}
		}},
		{Name: "second", DependsOn: []string{"first"}, Run: func(context.Context, *observe.Env) verify.Answer {
			return verify.Answer{Status: report.Pass, Timed: true}
		}},
		{Name: "untimed", Run: func(context.Context, *observe.Env) verify.Answer { return verify.Answer{Status: report.Pass} }},
	}
	res := verify.Run(context.Background(), nil, checks, nil)
	if len(res) != 3 || res[0].DurationMS != 1234 || res[1].DurationMS != 0 || res[1].Status != report.Pass {
		t.Errorf("results %+v, want first 1234 ms and second 0 ms (their stages' times)", res)
	}
}
