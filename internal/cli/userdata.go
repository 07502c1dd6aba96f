package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	cloudinit "github.com/gpuaas/provision/cloud-init"
	"github.com/gpuaas/provision/internal/config"
	"github.com/gpuaas/provision/internal/diag"
	"github.com/gpuaas/provision/internal/enroll"
	"github.com/gpuaas/provision/internal/system"
)

var userdataCmd = &command{
	name:      "userdata",
	exits:     codes(ExitConfig, 20),
	noRoot:    true,
	exitNotes: map[int]exitNote{20: {"enroll", "a token that cannot enroll this node at this CA"}},
	summary:   "render #cloud-config user-data for a node from a config and a one-time token",
	usage: `Reads a provision config (as for bootstrap, but from this machine, not under
--root) and a one-time token, and prints #cloud-config user-data that writes
both to the node (the token 0600 on /run), turns off cloud-init's
manage_etc_hosts, enables and starts provision-renew.timer and
provision-verify.timer (renewal is always scheduled, whatever the image
did) and runs provision.service, so a failure of either is visible to
cloud-init. The token appears only in its own write_files entry.

The config is written whole: every section and key of the validated config
([renew] and [metrics] included, defaults written out), read back with
provision's own loader before anything is printed.

The token is checked before it is embedded: it must be a one-time token (a
JWT) whose subject is node_id, that has not expired, whose sha claim (if any)
is ca.fingerprint and whose audience is the sign endpoint of ca.url's CA.
Anything else is refused with exit 20 (enroll) and nothing is written; only
the CA can check its signature.

When the config moves state_dir, pki_dir, hosts_file, the token file or
metrics.textfile_dir out of what a packaged unit may write, the user-data also
writes a drop-in, /etc/systemd/system/<unit>.d/provision-paths.conf, for every
unit that writes there (provision.service, provision-verify.service,
provision-renew.service), whose ReadWritePaths= open exactly those paths
(provision.service creates a moved state_dir or pki_dir 0700 before it
starts) and whose conditions follow them (the done marker under state_dir,
pki_dir/current for renew), and its runcmd reloads systemd before the start.
A path the units keep read-only or hidden (under /usr, /boot, /efi, /proc,
/sys, /dev, /home, /root, /run/user, /tmp, /var/tmp, or / itself) is refused
(exit 3). With paths.key_group, each of the three units also gets
provision-key-group.conf (SupplementaryGroups= that group: the units, which
have no capabilities, may then give the key and the tasks to it); with
key.store = "tpm", provision-tpm.conf (SupplementaryGroups=tss). A unit
whose group does not exist does not start at all (status 216/GROUP), so the
runcmd first checks each group those drop-ins name and, when one is missing,
says which (tss comes from Debian's tpm-udev package) and starts nothing.

Examples:
  provision userdata --config node-0042.toml --token-file token.jwt > user-data.yaml
  provision userdata --config node-0042.toml --token-file token.jwt --out user-data.yaml
`,
	flags: func(f *flags) {
		f.fs.StringVar(&f.tokenFile, "token-file", "", "`path` of the file holding the node's one-time token (required)")
		f.fs.StringVar(&f.out, "out", "", "write the user-data to `path` instead of stdout: always mode 0600, an existing file replaced atomically whatever its mode; a symbolic link there is refused")
	},
}

func init() { userdataCmd.run = runUserdata }

func runUserdata(_ context.Context, env *runEnv, args []string) int {
	f := newFlags(userdataCmd, env)
	tokenFile, out := &f.tokenFile, &f.out
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	if *tokenFile == "" {
		return env.usage("userdata", "userdata needs --token-file", "")
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		return env.fail("userdata", diag.Config, err.Error(), "fix the named keys in "+f.config+" (see docs/configuration.md)")
	}
	// Not ReadRegular: on the operator's machine --token-file <(step ca
	// token ...) is a FIFO on purpose.
	raw, err := os.ReadFile(*tokenFile)
	if err != nil {
		return env.usage("userdata", fmt.Sprintf("--token-file %s: %v", *tokenFile, err), "")
	}
	tok := strings.TrimSpace(string(raw))
	if err := checkUserdataToken(cfg, tok, time.Now()); err != nil {
		// One line, naming the file and what is wrong, never the token.
		msg := fmt.Sprintf("--token-file %s: %v", *tokenFile, err)
		remedy := "mint a fresh one-time token for " + cfg.NodeID + " from this CA (step ca token " + cfg.NodeID + " --ca-url " + cfg.CA.URL + ") and render again; nothing was written"
		return env.fail("userdata", diag.Enroll, msg, remedy)
	}
	var buf bytes.Buffer
	if err := cloudinit.RenderConfig(&buf, cfg, tok); err != nil {
		return env.fail("userdata", diag.Config, "cannot render user-data: "+err.Error(), "fix the config's values")
	}
	if *out == "" {
		env.stdout.Write(buf.Bytes())
		return ExitOK
	}
	// The file holds the token: a temp file created 0600 next to it, fsynced
	// and renamed over it, so an existing 0644 file does not keep its mode
	// and no reader sees it half written. A symbolic link (or anything but a
	// regular file) at --out is refused, not followed and not replaced: the
	// token must land exactly where the operator said, and a link there may
	// have been put there to catch it.
	if err := system.WriteFileAtomic(*out, buf.Bytes(), system.WriteOptions{Mode: 0o600}); err != nil {
		msg := fmt.Sprintf("--out %s: %v", *out, err)
		if errors.Is(err, system.ErrUnsafeFile) {
			msg = fmt.Sprintf("--out %s is not a regular file (a symbolic link, say): provision does not write the token through it or replace it; remove it or choose another path", *out)
		}
		return env.usage("userdata", msg, "nothing was written")
	}
	fmt.Fprintf(env.stderr, "wrote %s (it holds the token: keep it 0600 and deliver it only to this node)\n", *out)
	return ExitOK
}

// checkUserdataToken refuses a token that cannot enroll this node, before
// it is copied into user-data that would only fail at first boot: it must
// be a JWT whose subject is node_id, that has not expired (step-ca's
// minute of leeway, as bootstrap judges it), whose sha claim, if any, is
// ca.fingerprint and whose audience is this CA's sign endpoint. Only the
// CA can check the signature.
func checkUserdataToken(cfg *config.Config, raw string, now time.Time) error {
	t, err := enroll.ParseToken(raw)
	if err != nil {
		return err
	}
	if err := t.Check(cfg.NodeID, cfg.CA.Fingerprint, now); err != nil {
		return err
	}
	if t.Expiry.IsZero() {
		return errors.New("check token: the token has no expiry (exp): not a step-ca one-time token")
	}
	return t.CheckAudience(cfg.CA.URL)
}
