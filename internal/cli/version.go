package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
)

var versionCmd = &command{
	name:   "version",
	format: true,
	exits:  codes(),
	noRoot: true, noConfig: true,
	summary: "print the version, the commit and what it was built with",
	usage: `Prints the version, the commit it was built from, the Go version and the
version of the step-ca client module (github.com/smallstep/certificates) linked
into the binary. --format json prints them as one JSON object with the keys
schema_version, version, commit, go_version, step_ca_client_module and
step_ca_client_version.

Examples:
  provision version
  provision version --format json | jq -r .commit
`,
}

func init() { versionCmd.run = runVersion }

// caClientModule is the module provision enrolls with (its ca package is the
// step-ca client).
const caClientModule = "github.com/smallstep/certificates"

// BuildInfo is what 'provision version' reports.
type BuildInfo struct {
	SchemaVersion int `json:"schema_version"`

	Version         string `json:"version"`
	Commit          string `json:"commit"`
	GoVersion       string `json:"go_version"`
	CAClientModule  string `json:"step_ca_client_module"`
	CAClientVersion string `json:"step_ca_client_version"`
}

// commit may be set at build time with -ldflags "-X
// github.com/gpuaas/provision/internal/cli.commit=..."; otherwise it is read
// from the Go toolchain's VCS stamp.
var commit = ""

// ReadBuildInfo returns the build's version, commit, Go version and step-ca
// client version; "unknown" for what the binary does not record (a test
// binary has no VCS stamp).
func ReadBuildInfo() BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return buildInfoFrom(bi, Version(), commit)
}

func buildInfoFrom(bi *debug.BuildInfo, version, commit string) BuildInfo {
	info := BuildInfo{SchemaVersion: SchemaVersion, Version: version, Commit: commit, GoVersion: runtime.Version(), CAClientModule: caClientModule, CAClientVersion: "unknown"}
	if bi != nil {
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if info.Commit == "" && rev != "" {
			info.Commit = rev
			if dirty {
				info.Commit += "-dirty"
			}
		}
		for _, d := range bi.Deps {
			if d.Path == caClientModule {
				info.CAClientVersion = d.Version
				if d.Replace != nil && d.Replace.Version != "" {
					info.CAClientVersion = d.Replace.Version
				}
			}
		}
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

func runVersion(_ context.Context, env *runEnv, args []string) int {
	f := newFlags(versionCmd, env)
	if code, ok := f.parse(env, args); !ok {
		return code
	}
	info := ReadBuildInfo()
	if f.format == "json" {
		b, _ := json.MarshalIndent(info, "", "  ")
		fmt.Fprintln(env.stdout, string(b))
		return ExitOK
	}
	if f.quiet {
		fmt.Fprintf(env.stdout, "provision %s\n", info.Version)
		return ExitOK
	}
	fmt.Fprintf(env.stdout, "provision %s\ncommit: %s\ngo: %s\nstep-ca client: %s %s\n", info.Version, info.Commit, info.GoVersion, info.CAClientModule, info.CAClientVersion)
	return ExitOK
}

// load resolves --root and reads the config. On failure it prints the
