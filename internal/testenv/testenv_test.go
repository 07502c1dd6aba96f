package testenv

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestLookProgram(t *testing.T) {
	if _, err := LookProgram("sh"); err != nil {
		t.Fatalf("sh not found: %v", err)
	}
	if p, err := LookProgram("no-such-program-provision-test"); err == nil {
		t.Fatalf("found a program that does not exist at %s", p)
	}
}

func TestRequireProgramMissingNeverPasses(t *testing.T) {
	t.Setenv("CI", "")
	var skipped bool
	t.Run("dev machine", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		RequireProgram(t, "no-such-program-provision-test", "nothing")
		t.Error("RequireProgram returned for a missing program")
	})
	if !skipped {
		t.Fatal("a missing program did not skip the test")
	}
}

func TestSyncBufferConcurrentWrites(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fmt.Fprintf(&b, "line %d\n", i)
		}()
	}
	wg.Wait()
	if n := strings.Count(b.String(), "\n"); n != 10 {
		t.Fatalf("got %d lines, want 10", n)
	}
}
