package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"

	cloudinit "github.com/gpuaas/provision/cloud-init"
	"github.com/gpuaas/provision/internal/config"
)

var userdataCmd = &command{
	name:    "userdata",
	summary: "render #cloud-config user-data for a node from a config and a one-time token",
	usage: `Reads a provision config (as for bootstrap, but from this machine, not under
--root) and a one-time token, and prints #cloud-config user-data that writes
both to the node (the token 0600 on /run), turns off cloud-init's
manage_etc_hosts and runs provision.service so a failure is visible to
cloud-init. The token appears only in its own write_files entry.

Extra flags:
  --token-file PATH   file holding the node's one-time token (required)
  --out PATH          write the user-data here (mode 0600) instead of stdout

Examples:
  provision userdata --config node-0042.toml --token-file token.jwt > user-data.yaml
  provision userdata --config node-0042.toml --token-file token.jwt --out user-data.yaml
`,
}

func init() { userdataCmd.run = runUserdata }

func runUserdata(_ context.Context, env *runEnv, args []string) int {
	f := newFlags(userdataCmd, env, false)
	tokenFile := f.fs.String("token-file", "", "file holding the node's one-time token")
	out := f.fs.String("out", "", "write the user-data to `path` (0600) instead of stdout")
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	if *tokenFile == "" {
		fmt.Fprintln(env.stderr, "provision: error: userdata needs --token-file")
		return ExitUsage
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		fmt.Fprintf(env.stderr, "provision: error: %v\n", err)
		return ExitConfig
	}
	tok, err := os.ReadFile(*tokenFile)
	if err != nil {
		fmt.Fprintf(env.stderr, "provision: error: --token-file %s: %v\n", *tokenFile, err)
		return ExitUsage
	}
	p := cloudinit.Params{
		NodeID: cfg.NodeID, CAURL: cfg.CA.URL, CAFingerprint: cfg.CA.Fingerprint, Token: string(bytes.TrimSpace(tok)),
		NodeAPIURL: cfg.NodeAPI.URL, TokenFile: cfg.CA.TokenFile, WaitPath: cfg.NodeAPI.WaitPath,
		WaitTimeout: cfg.NodeAPI.WaitTimeout.String(), HostsFile: cfg.Paths.HostsFile, PKIDir: cfg.Paths.PKIDir,
		StateDir: cfg.Paths.StateDir, Deadline: cfg.Bootstrap.Deadline.String(), RequestTimeout: cfg.Bootstrap.RequestTimeout.String(),
	}
	for _, h := range cfg.Hosts {
		p.Hosts = append(p.Hosts, cloudinit.Host{Name: h.Name, IP: h.IP})
	}
	var buf bytes.Buffer
	if err := cloudinit.Render(&buf, p); err != nil {
		fmt.Fprintf(env.stderr, "provision: error: cannot render user-data: %v\n", err)
		return ExitConfig
	}
	if *out == "" {
		env.stdout.Write(buf.Bytes())
		return ExitOK
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o600); err != nil {
		fmt.Fprintf(env.stderr, "provision: error: --out %s: %v\n", *out, err)
		return ExitUsage
	}
	fmt.Fprintf(env.stderr, "wrote %s (it holds the token: keep it 0600 and deliver it only to this node)\n", *out)
	return ExitOK
}
