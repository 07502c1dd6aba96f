package diag

import (
	"testing"
	"time"

	"github.com/gpuaas/provision/internal/probe"
)

// TestLayerTime: each probe layer gets the time of its own stage, not the
// first check the whole exchange (issue 25: tcp 1006 ms, tasks-wait 0 ms);
// the layer an exchange stopped at gets the rest, where the time went.
func TestLayerTime(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	// A healthy exchange: connected at 2 ms, server verified at 9, client
	// certificate sent at 10, handshake done at 12, the answer after a 1 s
	// long poll.
	healthy := &probe.Result{Stage: probe.StageBody, Duration: ms(1013)}
	for s, at := range map[probe.Stage]int{probe.StageConnected: 2, probe.StageServerCert: 8, probe.StageServerVerified: 9, probe.StageClientCert: 10,
		probe.StageHandshake: 12, probe.StageFirstByte: 1012, probe.StageResponse: 1012, probe.StageBody: 1013} {
		healthy.StageAt[s] = ms(at)
	}
	// The ingress rejects the client certificate on the first read (TLS
	// 1.3): the exchange ends 3 ms after the handshake.
	rejected := &probe.Result{Stage: probe.StageHandshake, Duration: ms(15)}
	rejected.StageAt = healthy.StageAt
	for s := probe.StageFirstByte; s <= probe.StageBody; s++ {
		rejected.StageAt[s] = 0
	}
	// Nothing listens: refused after 1 ms.
	refused := &probe.Result{Duration: ms(1)}
	for _, tc := range []struct {
		name    string
		r       *probe.Result
		layer   Layer
		stopped bool
		want    time.Duration
	}{
		{"healthy tcp: the dial", healthy, TCP, false, ms(2)},
		{"healthy tls-server: certificate to verified", healthy, TLSServer, false, ms(7)},
		{"healthy tls-client-auth: verified to handshake", healthy, TLSClientAuth, false, ms(3)},
		{"healthy route: judged from tasks-wait's answer", healthy, Route, false, 0},
		{"healthy identity: the same", healthy, Identity, false, 0},
		{"healthy tasks-wait: request, long poll, answer", healthy, TasksWait, false, ms(1001)},
		{"rejected: tls-server still its own stage", rejected, TLSServer, false, ms(7)},
		{"rejected: tls-client-auth gets the rest", rejected, TLSClientAuth, true, ms(6)},
		{"refused: tcp gets the whole exchange", refused, TCP, true, ms(1)},
		{"a 404: route gets the exchange after the handshake", healthy, Route, true, ms(1001)},
		{"no probe", nil, TCP, false, 0},
		{"not a probe layer", healthy, Clock, false, 0},
	} {
		if got := LayerTime(tc.r, tc.layer, tc.stopped); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
