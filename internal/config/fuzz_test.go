package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzParse checks that Parse never panics, that every rejection is a
// *Error whose problems name a key, and that an accepted config is stable:
// written back out as TOML it parses to the same Config, and its WaitURL is
// an https URL on the node API host with the node id in the path.
func FuzzParse(f *testing.F) {
	f.Add([]byte(with(nil)))
	f.Add([]byte(with(map[int]string{9: `fingerprint = "` + strings.ToUpper(fp[:2]) + ":" + fp[2:] + `"`})))
	f.Add([]byte(with(map[int]string{13: `url = "https://10.40.0.10:8443"`})))
	f.Add([]byte(with(map[int]string{2: `nodeid = "x"`})))
	f.Add([]byte(with(map[int]string{15: `wait_timeout = "5 seconds"`})))
	f.Add([]byte("node_id = 42\nca = \"x\"\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err != nil {
			if c != nil {
				t.Fatalf("config returned with an error")
			}
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error %T without problems: %v", err, err)
			}
			lines := bytes.Count(data, []byte("\n")) + 1
			for _, p := range ce.Problems {
				if p.Key == "" || p.Msg == "" || p.Line < 0 || p.Line > lines {
					t.Fatalf("bad problem %+v (file has %d lines)", p, lines)
				}
			}
			return
		}

		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(c); err != nil {
			t.Fatalf("encoding an accepted config: %v", err)
		}
		c2, err := Parse("re-encoded", buf.Bytes())
		if err != nil {
			t.Fatalf("accepted config does not re-validate: %v\noriginal:\n%s\nre-encoded:\n%s", err, data, buf.Bytes())
		}
		// The values must survive; which keys were written need not (the
		// encoder writes every key).
		w1, w2 := *c, *c2
		w1.written, w2.written = nil, nil
		if !reflect.DeepEqual(w1, w2) {
			t.Fatalf("re-encoded config differs:\n%+v\n%+v", c, c2)
		}

		u, err := url.Parse(c.WaitURL())
		if err != nil {
			t.Fatalf("WaitURL %q: %v", c.WaitURL(), err)
		}
		api, _ := url.Parse(c.NodeAPI.URL)
		wantPath := strings.ReplaceAll(c.NodeAPI.WaitPath, "{node_id}", c.NodeID)
		wantQuery := fmt.Sprintf("timeout=%d", int(c.NodeAPI.WaitTimeout.Seconds()))
		if u.Scheme != "https" || u.Host != api.Host || u.Path != wantPath || u.RawQuery != wantQuery || u.Fragment != "" || u.User != nil {
			t.Fatalf("WaitURL %q: want host %q path %q query %q", c.WaitURL(), api.Host, wantPath, wantQuery)
		}
		if _, ok := c.HostMap()[strings.ToLower(api.Hostname())]; !ok {
			t.Fatalf("node API host %q not in HostMap %v", api.Hostname(), c.HostMap())
		}
		for name, ip := range c.HostMap() {
			if !ip.IsValid() || name == "" {
				t.Fatalf("HostMap has %q -> %v", name, ip)
			}
		}
	})
}
