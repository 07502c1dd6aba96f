package lifecycle

import "github.com/gpuaas/provision/internal/config"

// RenewTimer is the systemd timer that renews the certificate.
const RenewTimer = "provision-renew.timer"

// FreshToken is the one wording of a re-enrollment: a fresh one-time
// token, and bootstrap.
func FreshToken(cfg *config.Config) string {
	return "write a fresh one-time token for this node_id to " + cfg.CA.TokenFile + " and run provision bootstrap"
}

// NeedsToken ends the summary of a certificate nothing but a re-enrollment
// can replace.
const NeedsToken = "re-enrollment with a fresh one-time token is needed (provision bootstrap)"

// RenewUnscheduled is not a verdict reason (the credentials may be fine)
// but a fact about the node status and verify report: RenewTimer is not
// enabled, so nothing will renew the certificate before it expires.
const RenewUnscheduled Reason = "renew-unscheduled"

// Remedy is the one wording of what to do about a verdict reason. bootstrap
// and renew act exactly so; verify, renew --check and status print it.
func Remedy(r Reason, cfg *config.Config) string {
	tok := cfg.CA.TokenFile
	fresh := FreshToken(cfg) + ": it replaces key, certificate and CA bundle together"
	switch r {
	case Missing:
		return "enroll: write a one-time token to " + tok + " and run provision bootstrap"
	case NotYetValid:
		return "check the node clock first (the clock layer); if it is right, re-enroll: " + fresh
	case OtherCA:
		return "re-enroll the node: its certificate was issued by a CA the control plane no longer uses; " + fresh
	case KeyExposed:
		return "run provision bootstrap or provision renew: either restricts the key to 0600 at once (no token needed); provision bootstrap rotates it when a fresh one-time token is in " + tok + " (a renewal with renew.rekey rotates it too, and revokes the exposed certificate); treat the key as exposed until then"
	case KeyWasExposed:
		return "rotate the exposed key: write a fresh one-time token to " + tok + " and run provision bootstrap (it issues a new key and revokes the exposed certificate), or provision renew --force with renew.rekey"
	case DirOpen:
		return "run provision bootstrap or provision renew: either restricts " + cfg.Paths.PKIDir + " to 0700 (no token needed)"
	case KeyUnreachable:
		return "run provision bootstrap or provision renew: either gives state_dir (0710), pki_dir and its generations (0750) and the key (0640) to paths.key_group " + cfg.Paths.KeyGroup + " (no token needed); a directory above them that provision did not make must let that group search it (chmod o+x, or g+x with that group), or move pki_dir"
	case BundleStale:
		return "run provision bootstrap or provision renew: either refreshes ca.pem from the CA's current roots (no token needed), exactly the current and federated ones, proven before it is published"
	case PastRenewal:
		return "renew before it expires: run provision renew (no token: it renews over mTLS with the current certificate; " + RenewTimer + " runs it), or " + fresh
	case Expired:
		return "renew after expiry: provision renew (and bootstrap) do it without a token when the CA's provisioner allows it (the claim allowRenewalAfterExpiry: the control-plane team's setting); otherwise re-enroll: " + fresh + "; then check why " + RenewTimer + " did not renew it in time (systemctl status provision-renew.service)"
	case Revoked:
		return "the certificate was revoked, so it can no longer be renewed; re-enroll: " + fresh
	case ClockSkewed:
		return "synchronise the node clock (chrony or systemd-timesyncd, and order provision after time-sync.target), then run again; nothing irreversible was done"
	case RenewUnscheduled:
		return "enable it: systemctl enable --now " + RenewTimer + " (the package enables it on install and an upgrade keeps an operator's choice; provision userdata enables it too); a certificate nothing renews expires within its lifetime"
	case KeyLost:
		return "the key cannot be recovered (a TPM key never leaves its TPM, and a clear destroys it); re-enroll: " + fresh + " (with key.store = \"tpm\" the new key is made in this TPM); if the TPM was not meant to be cleared, find out who cleared it (firmware setup, an OS installer, tpm2_clear)"
	case RootsUnknown:
		return "check the CA (provision verify's ca-root check), then run again"
	}
	return "re-enroll: " + fresh
}
