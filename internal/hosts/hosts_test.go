package hosts

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

const (
	B = BeginMarker
	E = EndMarker
)

var api = Entry{Name: "node-api.cp.internal", IP: netip.MustParseAddr("10.40.0.10")}

// block renders the managed block for entries (already in sorted order) with
// the given line ending, the way Apply must write it.
func block(eol string, lines ...string) string {
	var b strings.Builder
	b.WriteString(B + eol)
	for _, l := range lines {
		b.WriteString(l + eol)
	}
	b.WriteString(E + eol)
	return b.String()
}

const apiLine = "10.40.0.10\tnode-api.cp.internal"

func TestApply(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		entries []Entry
		want    string
	}{
		{
			name: "empty file",
			in:   "",
			want: block("\n", apiLine),
		},
		{
			name: "no trailing newline gets one before the block",
			in:   "127.0.0.1 localhost",
			want: "127.0.0.1 localhost\n" + block("\n", apiLine),
		},
		{
			name: "last line ending in a bare CR gets only the LF (fuzz regression)",
			in:   "127.0.0.1 localhost\n# odd\r",
			want: "127.0.0.1 localhost\n# odd\r\n" + block("\n", apiLine),
		},
		{
			name: "a lone CR as the whole file makes it a CRLF file (fuzz regression)",
			in:   "\r",
			want: "\r\n" + block("\r\n", apiLine),
		},
		{
			name: "user lines kept byte for byte and block appended",
			in:   "127.0.0.1\tlocalhost   \n# a comment  \n\n::1 ip6-localhost ip6-loopback\n   \t\n",
			want: "127.0.0.1\tlocalhost   \n# a comment  \n\n::1 ip6-localhost ip6-loopback\n   \t\n" + block("\n", apiLine),
		},
		{
			name: "CRLF file: block uses CRLF",
			in:   "127.0.0.1 localhost\r\n::1 localhost\r\n",
			want: "127.0.0.1 localhost\r\n::1 localhost\r\n" + block("\r\n", apiLine),
		},
		{
			name: "CRLF file without final newline",
			in:   "127.0.0.1 localhost\r\n# last",
			want: "127.0.0.1 localhost\r\n# last\r\n" + block("\r\n", apiLine),
		},
		{
			name: "mixed endings: other lines untouched, block follows the first line",
			in:   "127.0.0.1 localhost\r\n# unix line\n",
			want: "127.0.0.1 localhost\r\n# unix line\n" + block("\r\n", apiLine),
		},
		{
			name: "existing block replaced, lines before and after survive",
			in:   "127.0.0.1 localhost\n\n" + block("\n", "10.0.0.1\tnode-api.cp.internal", "10.0.0.2 stale.example") + "# after\n10.9.9.9 other\n",
			want: "127.0.0.1 localhost\n\n" + block("\n", apiLine) + "# after\n10.9.9.9 other\n",
		},
		{
			name: "existing block at start of file",
			in:   block("\n", "10.0.0.1 old") + "127.0.0.1 localhost\n",
			want: block("\n", apiLine) + "127.0.0.1 localhost\n",
		},
		{
			name: "existing block at end without final newline keeps that",
			in:   "127.0.0.1 localhost\n" + B + "\n10.0.0.1 old\n" + E,
			want: "127.0.0.1 localhost\n" + B + "\n" + apiLine + "\n" + E,
		},
		{
			name: "existing CRLF block in CRLF file replaced with CRLF",
			in:   "127.0.0.1 localhost\r\n" + block("\r\n", "10.0.0.1 old") + "# tail\r\n",
			want: "127.0.0.1 localhost\r\n" + block("\r\n", apiLine) + "# tail\r\n",
		},
		{
			name: "markers with surrounding spaces are recognised and normalised",
			in:   "a\n   " + B + " \t\n10.0.0.1 old\n\t" + E + "  \nz\n",
			want: "a\n" + block("\n", apiLine) + "z\n",
		},
		{
			name: "marker with a stray CR before LF is recognised",
			in:   "a\n" + B + "\r\r\n10.0.0.1 old\n" + E + "\n",
			want: "a\n" + block("\n", apiLine),
		},
		{
			name:    "several entries sorted by name and lower-cased",
			in:      "127.0.0.1 localhost\n",
			entries: []Entry{{Name: "Zeta.cp.internal", IP: netip.MustParseAddr("10.0.0.3")}, api, {Name: "ca.cp.internal", IP: netip.MustParseAddr("10.0.0.1")}},
			want:    "127.0.0.1 localhost\n" + block("\n", "10.0.0.1\tca.cp.internal", apiLine, "10.0.0.3\tzeta.cp.internal"),
		},
		{
			name:    "IPv6 entries",
			in:      "::1 localhost\n",
			entries: []Entry{{Name: "node-api.cp.internal", IP: netip.MustParseAddr("fd00:0:0::10")}, {Name: "ca.cp.internal", IP: netip.MustParseAddr("2001:db8::1")}},
			want:    "::1 localhost\n" + block("\n", "2001:db8::1\tca.cp.internal", "fd00::10\tnode-api.cp.internal"),
		},
		{
			name: "same mapping outside the block is allowed and kept",
			in:   "10.40.0.10 node-api.cp.internal\n",
			want: "10.40.0.10 node-api.cp.internal\n" + block("\n", apiLine),
		},
		{
			name: "same mapping outside the block in another case, as an alias",
			in:   "10.40.0.10 api NODE-API.cp.internal # note\n",
			want: "10.40.0.10 api NODE-API.cp.internal # note\n" + block("\n", apiLine),
		},
		{
			name: "same mapping written as IPv4-mapped IPv6 outside the block",
			in:   "::ffff:10.40.0.10 node-api.cp.internal\n",
			want: "::ffff:10.40.0.10 node-api.cp.internal\n" + block("\n", apiLine),
		},
		{
			name:    "IPv4-mapped IPv6 entry with the same mapping outside the block",
			in:      "::ffff:10.40.0.10 node-api.cp.internal\n",
			entries: []Entry{{Name: "node-api.cp.internal", IP: netip.MustParseAddr("::ffff:10.40.0.10")}},
			want:    "::ffff:10.40.0.10 node-api.cp.internal\n" + block("\n", "::ffff:10.40.0.10\tnode-api.cp.internal"),
		},
		{
			name: "a commented-out conflicting line is not a conflict",
			in:   "# 10.9.9.9 node-api.cp.internal\n#10.9.9.9 node-api.cp.internal\n",
			want: "# 10.9.9.9 node-api.cp.internal\n#10.9.9.9 node-api.cp.internal\n" + block("\n", apiLine),
		},
		{
			name: "a conflicting mapping inside the old block is replaced, not refused",
			in:   block("\n", "10.9.9.9 node-api.cp.internal"),
			want: block("\n", apiLine),
		},
		{
			name: "comments and blank lines inside the old block are dropped",
			in:   block("\n", "# hand edit", "", "10.9.9.9 x"),
			want: block("\n", apiLine),
		},
		{
			name: "a name that only contains a managed name is not a conflict",
			in:   "10.9.9.9 node-api.cp.internal.example node-api\n",
			want: "10.9.9.9 node-api.cp.internal.example node-api\n" + block("\n", apiLine),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries := tt.entries
			if entries == nil {
				entries = []Entry{api}
			}
			in := []byte(tt.in)
			orig := bytes.Clone(in)
			got, changed, err := Apply(in, entries)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if !bytes.Equal(in, orig) {
				t.Fatalf("Apply modified its input")
			}
			if string(got) != tt.want {
				t.Fatalf("Apply:\n got %q\nwant %q", got, tt.want)
			}
			if changed != (tt.in != tt.want) {
				t.Fatalf("changed = %v, want %v", changed, tt.in != tt.want)
			}
			again, changed, err := Apply(got, entries)
			if err != nil {
				t.Fatalf("re-Apply: %v", err)
			}
			if changed || !bytes.Equal(again, got) {
				t.Fatalf("re-Apply changed=%v\n got %q\nwant %q", changed, again, got)
			}
			blk, err := Find(got)
			if err != nil || !blk.Present {
				t.Fatalf("Find after Apply: present=%v err=%v", blk.Present, err)
			}
			if len(blk.Entries) != len(entries) {
				t.Fatalf("Find found %d entries, want %d", len(blk.Entries), len(entries))
			}
		})
	}
}

func TestApplyUnchangedIsIdentical(t *testing.T) {
	for _, in := range []string{
		block("\n", apiLine),
		"127.0.0.1 localhost\n" + block("\n", apiLine) + "# tail\n",
		"127.0.0.1 localhost\r\n" + block("\r\n", apiLine),
		"x\n" + B + "\n" + apiLine + "\n" + E,
	} {
		got, changed, err := Apply([]byte(in), []Entry{api})
		if err != nil {
			t.Fatalf("Apply(%q): %v", in, err)
		}
		if changed || string(got) != in {
			t.Fatalf("Apply(%q) changed=%v got %q", in, changed, got)
		}
	}
}

func TestApplyErrors(t *testing.T) {
	big := bytes.Repeat([]byte("# padding line of a hosts file that is far too big\n"), MaxSize/50+1)
	tests := []struct {
		name     string
		in       string
		entries  []Entry
		wantLine int    // for *Error; -1 when the error is not an *Error
		wantMsg  string // substring
	}{
		{name: "lone BEGIN", in: "127.0.0.1 localhost\n" + B + "\n10.0.0.1 x\n", wantLine: 2, wantMsg: "BEGIN marker without an END marker"},
		{name: "lone BEGIN as last line without newline", in: "a\nb\n" + B, wantLine: 3, wantMsg: "BEGIN marker without an END marker"},
		{name: "lone END", in: "127.0.0.1 localhost\n10.0.0.1 x\n" + E + "\n", wantLine: 3, wantMsg: "END marker without a BEGIN marker"},
		{name: "END before BEGIN", in: "a\n" + E + "\nb\n" + B + "\n", wantLine: 2, wantMsg: "END marker before the BEGIN marker"},
		{name: "duplicate BEGIN", in: B + "\n" + B + "\n" + E + "\n", wantLine: 2, wantMsg: "second BEGIN marker (the first is on line 1)"},
		{name: "duplicate END", in: B + "\n" + E + "\n\n" + E + "\n", wantLine: 4, wantMsg: "second END marker (the first is on line 2)"},
		{name: "two whole blocks", in: block("\n", "10.0.0.1 a") + block("\n", "10.0.0.2 b"), wantLine: 4, wantMsg: "second BEGIN marker"},
		{name: "duplicate BEGIN in CRLF with spaces", in: "  " + B + "\r\n" + B + " \r\n" + E + "\r\n", wantLine: 2, wantMsg: "second BEGIN marker"},
		{name: "NUL byte", in: "127.0.0.1 localhost\n10.0.0.1 a\x00b\n", wantLine: 2, wantMsg: "NUL byte"},
		{name: "NUL byte first", in: "\x00", wantLine: 1, wantMsg: "NUL byte"},
		{name: "oversize input", in: string(big), wantLine: 0, wantMsg: "larger than"},
		{name: "garbage inside the block", in: block("\n", "not-an-ip node-api"), wantLine: 2, wantMsg: "does not start with an IP address"},
		{name: "conflict before the block", in: "127.0.0.1 localhost\n10.9.9.9 node-api.cp.internal\n" + block("\n", apiLine), wantLine: 2, wantMsg: "maps node-api.cp.internal to 10.9.9.9 outside the managed block, but the config wants 10.40.0.10"},
		{name: "conflict after the block", in: block("\n", apiLine) + "\n10.9.9.9 node-api.cp.internal\n", wantLine: 5, wantMsg: "maps node-api.cp.internal to 10.9.9.9"},
		{name: "conflict as an alias, other case, no block yet", in: "a\nb\nc\n10.9.9.9   other   NODE-API.CP.INTERNAL # x\n", wantLine: 4, wantMsg: "maps NODE-API.CP.INTERNAL to 10.9.9.9"},
		{name: "conflict with an IPv6 address", in: "fd00::99 node-api.cp.internal\n", wantLine: 1, wantMsg: "to fd00::99"},
		{name: "conflict in CRLF file", in: "127.0.0.1 localhost\r\n10.9.9.9 node-api.cp.internal\r\n", wantLine: 2, wantMsg: "maps node-api.cp.internal"},
		{name: "no entries", in: "", entries: []Entry{}, wantLine: -1, wantMsg: "no entries"},
		{name: "invalid IP", in: "", entries: []Entry{{Name: "a"}}, wantLine: -1, wantMsg: "no valid IP"},
		{name: "empty name", in: "", entries: []Entry{{IP: api.IP}}, wantLine: -1, wantMsg: "not a hostname"},
		{name: "name with a space", in: "", entries: []Entry{{Name: "a b", IP: api.IP}}, wantLine: -1, wantMsg: "not a hostname"},
		{name: "name with a newline (line injection)", in: "", entries: []Entry{{Name: "a\n" + E, IP: api.IP}}, wantLine: -1, wantMsg: "not a hostname"},
		{name: "name with a comment sign", in: "", entries: []Entry{{Name: "a#b", IP: api.IP}}, wantLine: -1, wantMsg: "not a hostname"},
		{name: "name with a vertical tab", in: "", entries: []Entry{{Name: "a\vb", IP: api.IP}}, wantLine: -1, wantMsg: "not a hostname"},
		{name: "name with a no-break space", in: "", entries: []Entry{{Name: "a\u00a0b", IP: api.IP}}, wantLine: -1, wantMsg: "not a hostname"},
		{name: "IP zone with a newline (line injection)", in: "", entries: []Entry{{Name: "a", IP: netip.MustParseAddr("fe80::1%x\n" + E)}}, wantLine: -1, wantMsg: "not usable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries := tt.entries
			if entries == nil {
				entries = []Entry{api}
			}
			out, changed, err := Apply([]byte(tt.in), entries)
			if err == nil {
				t.Fatalf("Apply succeeded, want an error; got %q", out)
			}
			if out != nil || changed {
				t.Fatalf("Apply returned output %q changed=%v with an error", out, changed)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %q does not contain %q", err, tt.wantMsg)
			}
			var he *Error
			if tt.wantLine < 0 {
				if errors.As(err, &he) {
					t.Fatalf("entry problem reported as a file problem: %v", err)
				}
				return
			}
			if !errors.As(err, &he) {
				t.Fatalf("error %T %v is not *hosts.Error", err, err)
			}
			if he.Line != tt.wantLine {
				t.Fatalf("line = %d, want %d (%v)", he.Line, tt.wantLine, err)
			}
			if tt.wantLine > 0 && !strings.HasPrefix(err.Error(), "line ") {
				t.Fatalf("error %q does not start with its line", err)
			}
			// Remove refuses the same broken files (entry problems aside).
			if !strings.Contains(tt.name, "conflict") && tt.wantMsg != "does not start with an IP address" {
				if _, _, rerr := Remove([]byte(tt.in)); rerr == nil {
					t.Fatalf("Remove accepted a file Apply refused")
				}
			}
		})
	}
}

func TestRemove(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"no block", "127.0.0.1 localhost\n", "127.0.0.1 localhost\n"},
		{"no block, no final newline", "127.0.0.1 localhost", "127.0.0.1 localhost"},
		{"only the block", block("\n", apiLine), ""},
		{"block in the middle", "a\r\n\n" + block("\n", apiLine) + "  z  \n", "a\r\n\n  z  \n"},
		{"CRLF block", "a\r\n" + block("\r\n", apiLine) + "z\r\n", "a\r\nz\r\n"},
		{"block at the end without final newline", "a\n" + B + "\n" + apiLine + "\n" + E, "a\n"},
		{"markers with spaces", "a\n " + B + "\n" + apiLine + "\n" + E + " \nz", "a\nz"},
		{"garbage inside the block is removed with it", "a\n" + block("\n", "whatever this is") + "z\n", "a\nz\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed, err := Remove([]byte(tt.in))
			if err != nil {
				t.Fatalf("Remove: %v", err)
			}
			if string(got) != tt.want {
				t.Fatalf("Remove:\n got %q\nwant %q", got, tt.want)
			}
			if changed != (tt.in != tt.want) {
				t.Fatalf("changed = %v", changed)
			}
			again, changed, err := Remove(got)
			if err != nil || changed || !bytes.Equal(again, got) {
				t.Fatalf("second Remove: changed=%v err=%v got %q", changed, err, again)
			}
		})
	}
}

func TestRemoveUndoesApply(t *testing.T) {
	for _, in := range []string{
		"127.0.0.1 localhost\n::1 localhost\n",
		"127.0.0.1 localhost\r\n# c\r\n\r\n",
		"# only a comment\n\n\n",
	} {
		out, _, err := Apply([]byte(in), []Entry{api})
		if err != nil {
			t.Fatal(err)
		}
		back, changed, err := Remove(out)
		if err != nil || !changed || string(back) != in {
			t.Fatalf("Remove(Apply(%q)) = %q changed=%v err=%v", in, back, changed, err)
		}
	}
}

func TestFind(t *testing.T) {
	in := "127.0.0.1 localhost\n" +
		B + "\n" +
		"# comment inside\n" +
		"10.0.0.1\tCA.cp.internal ca # trailing comment\n" +
		"\n" +
		"fd00::10 node-api.cp.internal\n" +
		"10.0.0.9\n" + // an address without a name is ignored, as resolvers do
		E + "\n" +
		"10.9.9.9 outside\n"
	blk, err := Find([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Block{Present: true, Begin: 1, End: 7, Entries: []Entry{
		{Name: "ca.cp.internal", IP: netip.MustParseAddr("10.0.0.1")},
		{Name: "ca", IP: netip.MustParseAddr("10.0.0.1")},
		{Name: "node-api.cp.internal", IP: netip.MustParseAddr("fd00::10")},
	}}
	if blk.Present != want.Present || blk.Begin != want.Begin || blk.End != want.End || len(blk.Entries) != len(want.Entries) {
		t.Fatalf("Find = %+v, want %+v", blk, want)
	}
	for i := range want.Entries {
		if blk.Entries[i] != want.Entries[i] {
			t.Fatalf("entry %d = %+v, want %+v", i, blk.Entries[i], want.Entries[i])
		}
	}

	for _, s := range []string{"", "127.0.0.1 localhost\n", "# BEGIN something else\n# END something else\n", "#" + B + "\n"} {
		blk, err := Find([]byte(s))
		if err != nil || blk.Present || blk.Entries != nil {
			t.Fatalf("Find(%q) = %+v, %v; want no block", s, blk, err)
		}
	}
}
