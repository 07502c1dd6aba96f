package firstboot

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/gpuaas/provision/tests/controlplane"
	"github.com/gpuaas/provision/tests/nodetest"
)

// walk is one runbook walk: a node that was healthy, a control plane that
// is then broken, the shell an operator would type the runbook's commands
// into, and the parsed runbook.
type walk struct {
	t       *testing.T
	cp      *controlplane.ControlPlane
	n       *node
	sh      *shell
	runbook map[string]section
	before  nodetest.Receipt // the receipt of the healthy node
}

// stage is what verify reports after a fault (or after a partial fix) and
// the runbook's fix for it.
type stage struct {
	section string // runbook section; also the failed layer
	code    int
	owner   string
	// symptom is a code span of the section's Symptom bullet that must
	// appear in what the report says about the layer.
	symptom string
	// fix applies the section's fix, to the control plane or through the
	// runbook's own node commands (w.fixCommand).
	fix func(w *walk)
}

// fixCommand runs a command that the section's Fix bullet names, and wants
// exit 0.
func (w *walk) fixCommand(section, cmd string) {
	w.t.Helper()
	if !slices.Contains(codeSpans(w.runbook[section].bullet(w.t, "Fix")), cmd) {
		w.t.Fatalf("runbook section %q: its Fix no longer names `%s`", section, cmd)
	}
	if code, _ := w.sh.run(cmd); code != 0 {
		w.t.Fatalf("runbook fix `%s` exited %d", cmd, code)
	}
}

// TestRunbookWalk reproduces a failure per runbook section, runs the
// section's Confirm commands, finds its quoted symptom in the report,
// applies its Fix and runs its Prove commands and checks.
func TestRunbookWalk(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		breaks func(w *walk)
		stages []stage
		// prove are the sections whose Prove is run after the last fix.
		prove []string
		// newCert: the fix re-enrolled (a new serial in the receipt).
		newCert bool
	}{
		{
			name:   "tls-client-auth: the ingress trusts the wrong CA",
			breaks: func(w *walk) { w.cp.SetClientCAMode(controlplane.ClientCAUnrelated) },
			stages: []stage{{
				section: "tls-client-auth", code: 16, owner: "ingress",
				symptom: "remote error: tls: unknown certificate authority",
				// "make the client-auth trust the persistent node CA"
				fix: func(w *walk) { w.cp.SetClientCAMode(controlplane.ClientCAStep) },
			}},
			prove: []string{"tls-client-auth"},
		},
		{
			name:   "identity: the ingress does not forward the client certificate",
			breaks: func(w *walk) { w.cp.API.FailAlways(controlplane.IdentityFault(false, "missing")) },
			stages: []stage{{
				section: "identity", code: 18, owner: "ingress",
				symptom: `{"error":"invalid node identity","mtls_present":false,...}`,
				// "add the passTLSClientCert middleware"
				fix: func(w *walk) { w.cp.API.ClearFaults() },
			}},
			prove: []string{"identity"},
		},
		{
			name: "identity: the API cannot parse the forwarded certificate",
			breaks: func(w *walk) {
				w.cp.API.FailAlways(controlplane.IdentityFault(true, "cannot parse the forwarded client certificate"))
			},
			stages: []stage{{
				section: "identity", code: 18, owner: "api",
				symptom: `"mtls_present":true`,
				// "teach the API to parse the ingress's forwarded-cert format"
				fix: func(w *walk) { w.cp.API.ClearFaults() },
			}},
			prove: []string{"identity"},
		},
		{
			name: "ca: the CA was re-created, then the node is stale",
			breaks: func(w *walk) {
				if err := w.cp.RotateCA(); err != nil {
					w.t.Fatal(err)
				}
			},
			stages: []stage{
				{
					section: "ca", code: 13, owner: "ca",
					symptom: "the CA does not know a root with fingerprint ... (it answered 404): ca.fingerprint is wrong, or the CA was re-initialised with a new root",
					// "If the root really changed, update ca.fingerprint in
					// the node configs (user-data)"
					fix: func(w *walk) {
						w.n.Cfg.CA.Fingerprint = w.cp.CA.Fingerprint()
						w.n.RewriteConfig()
					},
				},
				{
					section: "ca", code: 13, owner: "node",
					symptom: "the node certificate (issuer ...) does not chain to any of the CA's current roots: it is stale",
					// "Owner node (stale certificate): re-enroll with a
					// fresh token, see credentials"
					fix: func(w *walk) {
						w.n.GiveToken()
						w.fixCommand("credentials", "provision bootstrap")
						if exists(w.n.Files.TokenPath) {
							w.t.Error("the used token is still on disk after the re-enrollment")
						}
					},
				},
			},
			prove:   []string{"ca", "credentials", "tls-client-auth"},
			newCert: true,
		},
		{
			name: "hosts: the managed block was removed",
			breaks: func(w *walk) {
				// What cloud-init's manage_etc_hosts does on a reboot.
				hosts := "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
				if err := os.WriteFile(w.n.Files.HostsPath, []byte(hosts), 0o644); err != nil {
					w.t.Fatal(err)
				}
			},
			stages: []stage{{
				section: "hosts", code: 10, owner: "node",
				symptom: "/etc/hosts has no provision managed block",
				fix:     func(w *walk) { w.fixCommand("hosts", "provision hosts apply") },
			}},
			prove: []string{"hosts"},
		},
		{
			name: "config: the node API URL is an IP literal",
			breaks: func(w *walk) {
				w.n.Cfg.NodeAPI.URL = "https://10.40.0.10:8443"
				w.n.RewriteConfig()
			},
			stages: []stage{{
				section: "config", code: 3, owner: "node",
				symptom: "node_api.url (line 10): uses the IP address 10.40.0.10; use the node API hostname ...",
				// "Use the hostname plus a [[hosts]] entry."
				fix: func(w *walk) {
					w.n.Cfg.NodeAPI.URL = w.cp.API.URL()
					w.n.RewriteConfig()
				},
			}},
			prove: []string{"config"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := &walk{t: t, cp: controlplane.Start(t, controlplane.Options{}), runbook: readRunbook(t)}
			w.n = newNode(t, w.cp, t.TempDir(), "gpu-0042", "")
			w.sh = newShell(w.n, slices.Contains(tc.prove, "tls-client-auth"))
			nodetest.WantExit(t, w.n.Run("bootstrap"), 0)
			w.before = w.n.Receipt()

			tc.breaks(w)
			for _, st := range tc.stages {
				w.confirm(st)
				st.fix(w)
			}
			for _, s := range tc.prove {
				w.prove(s)
			}
			r, rep := w.n.verify()
			if r.Code != 0 || !rep.OK {
				t.Fatalf("after the runbook's fix the node is not healthy:\n%s", r)
			}
			if after := w.n.Receipt(); (after.Serial != w.before.Serial) != tc.newCert {
				t.Errorf("receipt serial %s -> %s; want a new certificate: %v", w.before.Serial, after.Serial, tc.newCert)
			}
		})
	}
}

// confirm checks that verify reports st and that the section's Confirm
// commands show its quoted symptom.
func (w *walk) confirm(st stage) {
	t := w.t
	t.Helper()
	sec, ok := w.runbook[st.section]
	if !ok {
		t.Fatalf("docs/runbook.md has no section %q", st.section)
	}
	if !slices.Contains(codeSpans(sec.bullet(t, "Symptom")), st.symptom) {
		t.Fatalf("runbook section %q: its Symptom no longer quotes `%s`; quoted: %q", st.section, st.symptom, codeSpans(sec.bullet(t, "Symptom")))
	}
	if !strings.Contains(sec.bullet(t, "Owner"), st.owner) {
		t.Errorf("runbook section %q: its Owner does not name %q", st.section, st.owner)
	}

	r, rep := w.n.verify()
	if r.Code != st.code || rep.FailedLayer != st.section || rep.Owner != st.owner {
		t.Fatalf("want exit %d, failed_layer %s, owner %s:\n%s", st.code, st.section, st.owner, r)
	}
	if said := rep.Summary + "\n" + rep.LayerText(st.section); !symptomIn(st.symptom, said) {
		t.Fatalf("the runbook's symptom `%s` is not what verify says about %s:\n%s", st.symptom, st.section, said)
	}

	// The section's own Confirm commands, as typed on the node.
	cmds := commands(sec.bullet(t, "Confirm"))
	if !slices.ContainsFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "provision verify --format json | jq ") }) {
		t.Fatalf("runbook section %q: its Confirm has no `provision verify --format json | jq ...` line: %q", st.section, cmds)
	}
	var shown strings.Builder
	for _, c := range cmds {
		code, out := w.sh.run(c)
		if strings.Contains(c, "| jq") && code != 0 {
			t.Errorf("runbook confirm `%s`: jq exited %d", c, code)
		}
		shown.WriteString(jsonText(out))
	}
	if !symptomIn(st.symptom, shown.String()) {
		t.Errorf("the runbook's Confirm commands for %s do not show the failure `%s`; they printed:\n%s", st.section, st.symptom, shown.String())
	}
}

// prove runs the section's Prove: its runnable commands (each must exit 0;
// a curl must print 200 or 204) and its prose checks ("`provision verify`
// passes `x`", "... exits 0").
func (w *walk) prove(section string) {
	t := w.t
	t.Helper()
	text := w.runbook[section].bullet(t, "Prove")
	cmds := commands(text)
	p := parseProofs(text)
	if len(cmds) == 0 && len(p.passes) == 0 && !p.verifyOK && !p.bootstrapOK {
		t.Fatalf("runbook section %q: nothing in its Prove can be checked:\n%s", section, text)
	}
	for _, c := range cmds {
		code, out := w.sh.run(c)
		if code != 0 {
			t.Errorf("runbook proof `%s` exited %d", c, code)
		}
		if strings.HasPrefix(c, "curl ") && strings.TrimSpace(out) != "200" && strings.TrimSpace(out) != "204" {
			t.Errorf("runbook proof `%s` printed %q, want 200 or 204", c, out)
		}
		if strings.Contains(c, "receipt.json") && strings.Contains(c, "serial") && !strings.Contains(out, w.n.Receipt().Serial) {
			t.Errorf("runbook proof `%s` does not show the receipt's serial %s", c, w.n.Receipt().Serial)
		}
	}
	if p.bootstrapOK {
		if code, _ := w.sh.run("provision bootstrap"); code != 0 {
			t.Errorf("runbook proof: `provision bootstrap` exited %d", code)
		}
	}
	if len(p.passes) > 0 || p.verifyOK {
		r, rep := w.n.verify()
		if p.verifyOK && r.Code != 0 {
			t.Errorf("runbook proof: `provision verify` exited %d\n%s", r.Code, r)
		}
		for _, layer := range p.passes {
			cs := rep.LayerChecks(layer)
			if len(cs) == 0 {
				t.Errorf("runbook proof names layer %q, which verify does not report", layer)
			}
			for _, c := range cs {
				if c.Status != "pass" {
					t.Errorf("runbook proof: `provision verify` passes `%s`: check %s is %s: %s", layer, c.Name, c.Status, c.Message)
				}
			}
		}
	}
}
