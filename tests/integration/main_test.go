package integration

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/gpuaas/provision/internal/testenv"
)

// provisionBin is the real provision binary, built once by TestMain.
var provisionBin string

// defaultParallel is how many (scenario, ingress) cells run at once unless
// -test.parallel is given. The cells mostly wait (on ingress programs, on
// step-ca, on long polls and deadlines), so on a 2-core machine running
// only GOMAXPROCS of them at a time would leave the CPUs idle.
const defaultParallel = 8

func TestMain(m *testing.M) {
	flag.Parse()
	testenv.DefaultParallel(defaultParallel)
	code := testenv.RunWithBinary(m, "integration", "", func(bin string) { provisionBin = bin })
	printMatrix()
	os.Exit(code)
}

// matrix collects what each (scenario, ingress) cell observed, printed as
// one table after the run so a reader sees the whole replay at once.
var matrix struct {
	sync.Mutex
	rows []string
}

func record(scenario, kind, observed string) {
	matrix.Lock()
	defer matrix.Unlock()
	matrix.rows = append(matrix.rows, fmt.Sprintf("%-34s | %-17s | %s", scenario, kind, observed))
}

func printMatrix() {
	matrix.Lock()
	defer matrix.Unlock()
	if len(matrix.rows) == 0 {
		return
	}
	sort.Strings(matrix.rows)
	fmt.Printf("\nINCIDENT REPLAY MATRIX\n%-34s | %-17s | %s\n%s\n%s\n", "scenario", "ingress", "observed", strings.Repeat("-", 120), strings.Join(matrix.rows, "\n"))
}
