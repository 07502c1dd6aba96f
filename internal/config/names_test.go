package config

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// The rules as they were written before they were made cheap to build:
// ValidNodeID and ValidHostname must accept exactly what these accept.
var (
	nodeIDRegexp   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$`)
	hostnameRegexp = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

func TestNamesMatchTheirPatterns(t *testing.T) {
	label := func(n int) string { return strings.Repeat("a", n) }
	cases := []string{"", "a", "-a", "a-", "a.b", ".a", "a.", "a..b", "gpu-0042", "A_b.c-d", "a b", "é",
		label(63), label(64), label(62) + "-", "K", "ſ", "\u212a" + label(62), "a." + label(63), "a." + label(64),
		strings.Repeat(label(63)+".", 3) + label(61), strings.Repeat(label(63)+".", 3) + label(62), "a\n", "\na"}
	// Random strings over the characters either rule treats specially,
	// among them the two non-ASCII letters (?i) folds into [a-z].
	alphabet := []rune("aZ09-._ .\u212a\u017f\u00e9/")
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		n := r.IntN(80)
		if i%10 == 0 {
			n = 240 + r.IntN(20) // around the 253-character limit
		}
		b := make([]rune, n)
		for j := range b {
			if i%2 == 0 && j%7 != 6 {
				b[j] = 'a' // mostly valid, so both answers occur
			} else {
				b[j] = alphabet[r.IntN(len(alphabet))]
			}
		}
		cases = append(cases, string(b))
	}
	var accepted [2]int
	for _, s := range cases {
		if got, want := ValidNodeID(s), nodeIDRegexp.MatchString(s); got != want {
			t.Errorf("ValidNodeID(%q) = %v, the pattern says %v", s, got, want)
		} else if got {
			accepted[0]++
		}
		if got, want := ValidHostname(s), hostnameRegexp.MatchString(s) && len(s) <= 253; got != want {
			t.Errorf("ValidHostname(%q) = %v, the pattern says %v", s, got, want)
		} else if got {
			accepted[1]++
		}
	}
	if accepted[0] < 100 || accepted[1] < 100 {
		t.Fatalf("only %v of %d cases were valid: the comparison says little", accepted, len(cases))
	}
}
