package clientcertmod_test

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpuaas/provision/clientcert"
)

// Counting rejections with the Prometheus Go client, through
// MiddlewareOptions.OnReject: clientcert itself imports no metrics library.
// The labels are the bounded reason and mtls_present; the caller's peer
// address and User-Agent, unbounded, go to the log line (remote_addr,
// user_agent), which is where the incident's anonymous caller is found.
// This example lives in the main module, beside the module check: clientcert
// (its own module, standard library only) never sees client_golang.
func Example_prometheus() {
	rejections := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nodeapi_identity_rejections_total",
		Help: "Requests refused for want of a verified node identity, by reason and whether a client certificate reached the API.",
	}, []string{"reason", "mtls_present"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(rejections)
	// Every series exists from the start, so rate() and alerts see the
	// first rejection of each kind.
	for _, r := range clientcert.Reasons() {
		if r != clientcert.ReasonOK {
			rejections.WithLabelValues(string(r), "true")
			rejections.WithLabelValues(string(r), "false")
		}
	}

	v, err := clientcert.NewVerifier(clientcert.Config{
		Roots:          x509.NewCertPool(), // in production: the node CA's roots
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.40.0.0/24")},
	})
	if err != nil {
		panic(err)
	}
	api := v.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), clientcert.MiddlewareOptions{
		Logger: slog.New(slog.DiscardHandler),
		OnReject: func(r clientcert.Rejection) {
			rejections.WithLabelValues(string(r.Reason), strconv.FormatBool(r.MTLSPresent)).Inc()
			if !r.MTLSPresent && !r.FromTrustedProxy {
				fmt.Printf("anonymous caller %s (%s)\n", r.PeerAddr, r.UserAgent)
			}
		},
	})
	call := func(peer, ua, forwarded string) {
		r := httptest.NewRequest("GET", "/v1/nodes/gpu-0042/tasks/wait", nil)
		r.RemoteAddr, r.Header["User-Agent"] = peer, []string{ua}
		if forwarded != "" {
			r.Header.Set("X-Forwarded-Tls-Client-Cert", forwarded)
		}
		api.ServeHTTP(httptest.NewRecorder(), r)
	}
	call("10.40.0.2:41000", "node-agent/1.4", "")        // the ingress forwarded nothing
	call("10.40.0.2:41002", "node-agent/1.4", "")        // again
	call("10.40.7.9:50123", "python-requests/2.31", "")  // around the ingress, no identity
	call("10.40.0.2:41004", "node-agent/1.4", "garbage") // a header the API cannot parse

	// What a scrape of reg would show, for the rejections that happened.
	mfs, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				fmt.Printf("%s{%s=%q,%s=%q} %g\n", mf.GetName(), m.GetLabel()[0].GetName(), m.GetLabel()[0].GetValue(),
					m.GetLabel()[1].GetName(), m.GetLabel()[1].GetValue(), v)
			}
		}
	}
	// Output:
	// anonymous caller 10.40.7.9:50123 (python-requests/2.31)
	// nodeapi_identity_rejections_total{mtls_present="false",reason="missing"} 3
	// nodeapi_identity_rejections_total{mtls_present="true",reason="malformed"} 1
}
