// Package diag is the vocabulary of diagnosis: the layers a failure can sit
// in, who owns each, and the one classifier that turns what happened on the
// wire into a layer, an owner, a remedy and whether retrying can help.
//
// In the incident, 404, EOF, "unknown certificate authority" and "invalid
// node identity" each hid the next defect because nothing said which layer
// produced them or whose it was. Keeping the mapping in exactly one place
// means bootstrap's retry decision, bootstrap's last line and verify's answer
// can never disagree.
package diag

// Layer names where in the path from node to API a check or failure sits.
// The names are an interface: JSON consumers and runbooks key on them.
type Layer string

// The layers, in the order a request crosses them.
const (
	Config        Layer = "config"
	Hosts         Layer = "hosts"
	Clock         Layer = "clock"
	Credentials   Layer = "credentials"
	CA            Layer = "ca"
	TCP           Layer = "tcp"
	TLSServer     Layer = "tls-server"
	TLSClientAuth Layer = "tls-client-auth"
	Route         Layer = "route"
	Identity      Layer = "identity"
	TasksWait     Layer = "tasks-wait"
	// Extensions beyond verify's ladder, used by bootstrap.
	Enroll Layer = "enroll" // the one-time token and the signing request
	State  Layer = "state"  // local writes of the receipt and state
	// Hook is renew.post_hook: the renewal was published, the command run
	// after it failed (used by renew).
	Hook Layer = "hook"
	// Internal is a bug in provision itself (a check that panicked): exit 1.
	Internal Layer = "internal"
)

// Layers lists every layer in order.
var Layers = []Layer{Config, Hosts, Clock, Credentials, CA, TCP, TLSServer, TLSClientAuth, Route, Identity, TasksWait, Enroll, State, Hook, Internal}

// Index orders layers; unknown layers sort last.
func (l Layer) Index() int {
	for i, x := range Layers {
		if x == l {
			return i
		}
	}
	return len(Layers)
}

// Owner is who has to act on a failure.
type Owner string

// The owners.
const (
	Node    Owner = "node"    // this machine: its config, files, clock, or its stale certificate
	CAOwner Owner = "ca"      // the step-ca service and whoever mints its tokens
	Network Owner = "network" // reachability between node and control plane
	Ingress Owner = "ingress" // the TLS-terminating router in front of the node API
	API     Owner = "api"     // the node API service itself
	// Provision owns a failure that is a bug in provision itself.
	Provision Owner = "provision"
)

// Finding is a classified failure.
type Finding struct {
	Layer     Layer
	Owner     Owner
	Transient bool   // retrying may help (bootstrap retries within its deadline)
	Summary   string // what failed, in one line
	Remedy    string // what to do next, in the incident's recovery words
	Evidence  map[string]string
	// Check names the failed_check of a step's finding when it is not the
	// step's own name (the bootstrap step "credentials" fails at "enroll").
	Check string
}

func (f *Finding) add(k, v string) {
	if v == "" {
		return
	}
	if f.Evidence == nil {
		f.Evidence = map[string]string{}
	}
	f.Evidence[k] = v
}

// Writable is the start of the remedy of a write provision could not make
// in dir, its own directory: the rest says what then.
func Writable(dir string) string { return "make " + dir + " writable" }

// NotDurable is the remedy of a write that was made but could not be made
// durable under where (an fsync failed), found before anything was
// published.
func NotDurable(where string) string {
	return "check the disk under " + where + " (the kernel log names the error), then run provision again; nothing was published"
}

// TaskNotKept is the finding of a task the proof received (the API
// dequeued it) that could not be handed off under stateDir: the task is in
// the evidence, for a person to give to the node-agent. after ends the
// summary, then the remedy.
func TaskNotKept(stateDir string, task []byte, err error, after, then string) *Finding {
	return &Finding{Layer: State, Owner: Node, Check: "task-save",
		Summary:  "the proof received a task but it could not be handed off: " + err.Error() + after,
		Remedy:   Writable(stateDir) + ", give this task (in the evidence) to the node-agent by hand" + then,
		Evidence: map[string]string{"task": string(task)}}
}
