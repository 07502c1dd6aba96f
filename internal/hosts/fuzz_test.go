package hosts

import (
	"bytes"
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// fuzzEntries turns fuzzer input into entries: names separated by ',', one
// address per name taken from ips (4 bytes for IPv4 when the first byte is
// even, else 16 for IPv6), or parsed from the name's "=addr" suffix so zones
// and odd spellings are reachable too.
func fuzzEntries(names string, ips []byte) []Entry {
	var out []Entry
	for i, n := range strings.Split(names, ",") {
		if i == 8 {
			break
		}
		var ip netip.Addr
		if name, addr, ok := strings.Cut(n, "="); ok {
			n = name
			ip, _ = netip.ParseAddr(addr)
		} else if len(ips) > 0 && ips[0]%2 == 0 && len(ips) >= 5 {
			ip = netip.AddrFrom4([4]byte(ips[1:5]))
			ips = ips[5:]
		} else if len(ips) >= 17 {
			ip = netip.AddrFrom16([16]byte(ips[1:17]))
			ips = ips[17:]
		} else {
			ip = netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		}
		out = append(out, Entry{Name: n, IP: ip})
	}
	return out
}

func sortedEntries(es []Entry) []Entry {
	out := make([]Entry, len(es))
	for i, e := range es {
		out[i] = Entry{Name: strings.ToLower(e.Name), IP: e.IP}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), a.IP.Compare(b.IP))
	})
	return out
}

// FuzzApply checks the properties the bootstrap relies on: Apply never
// panics; what it writes Find reads back as exactly the entries; a second
// Apply changes nothing; and every byte outside the block is preserved
// (Remove of the result equals Remove of the input, plus at most the final
// newline Apply had to add before appending a block).
func FuzzApply(f *testing.F) {
	seeds := []string{
		"",
		"127.0.0.1 localhost\n",
		"127.0.0.1 localhost",
		"127.0.0.1 localhost\r\n::1 localhost\r\n",
		"a\n" + B + "\n10.0.0.1 old\n" + E + "\nz\n",
		"a\n" + B + "\n10.0.0.1 old\n" + E,
		"  " + B + " \r\n" + E + "\r\n",
		B + "\n",
		E + "\n",
		E + "\n" + B + "\n",
		"10.9.9.9 node-api.cp.internal\n",
		"\x00",
	}
	for _, s := range seeds {
		f.Add([]byte(s), "node-api.cp.internal", []byte{0, 10, 40, 0, 10})
		f.Add([]byte(s), "Zeta,ca.cp.internal,node-api.cp.internal=fd00::10", []byte{1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	}
	f.Fuzz(func(t *testing.T, in []byte, names string, ips []byte) {
		entries := fuzzEntries(names, ips)
		orig := bytes.Clone(in)
		out, changed, err := Apply(in, entries)
		if !bytes.Equal(in, orig) {
			t.Fatalf("Apply modified its input")
		}
		before, ferr := Find(in)
		if err != nil {
			if out != nil || changed {
				t.Fatalf("output alongside an error")
			}
			return
		}
		if ferr != nil {
			t.Fatalf("Apply accepted a file Find refuses: %v", ferr)
		}
		if changed != !bytes.Equal(out, in) {
			t.Fatalf("changed=%v but equal=%v", changed, bytes.Equal(out, in))
		}

		blk, err := Find(out)
		if err != nil || !blk.Present {
			t.Fatalf("Find(Apply) present=%v err=%v\n%q", blk.Present, err, out)
		}
		if got, want := sortedEntries(blk.Entries), sortedEntries(entries); !slices.Equal(got, want) {
			t.Fatalf("round trip: Find gives %v, want %v", got, want)
		}

		again, changed2, err := Apply(out, entries)
		if err != nil || changed2 || !bytes.Equal(again, out) {
			t.Fatalf("second Apply: changed=%v err=%v\n got %q\nwant %q", changed2, err, again, out)
		}

		removed, _, err := Remove(out)
		if err != nil {
			t.Fatalf("Remove(Apply): %v", err)
		}
		var want []byte
		if before.Present {
			want, _, err = Remove(in)
			if err != nil {
				t.Fatalf("Remove(in): %v", err)
			}
		} else {
			want = bytes.Clone(in)
			if len(in) > 0 && in[len(in)-1] == '\r' {
				want = append(want, '\n')
			} else if len(in) > 0 && in[len(in)-1] != '\n' {
				eol := "\n"
				if i := bytes.IndexByte(in, '\n'); i > 0 && in[i-1] == '\r' {
					eol = "\r\n"
				}
				want = append(want, eol...)
			}
		}
		if !bytes.Equal(removed, want) {
			t.Fatalf("bytes outside the block changed:\n got %q\nwant %q", removed, want)
		}
	})
}
