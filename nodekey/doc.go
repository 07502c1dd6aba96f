// Package nodekey loads the node's private key, wherever provision keeps it,
// and hands it to a TLS client: the one piece a node-agent needs to present
// the node's identity.
//
// # Why it exists
//
// provision keeps the node's key in one of two stores (its config's
// key.store): a file (key.pem holds a software P-256 key, as openssl and
// tls.LoadX509KeyPair read it), or the node's TPM 2.0 (key.pem holds the
// TPM's wrapped key in the TSS2 key file format, "-----BEGIN TSS2 PRIVATE
// KEY-----", useless without this machine's TPM: the private key was made
// inside the TPM and never leaves it). tls.LoadX509KeyPair reads only the
// first kind, so an agent written against it breaks the day a node moves
// its key into the TPM. [LoadX509KeyPair] reads both and returns the same
// tls.Certificate; with a TPM key its PrivateKey is a crypto.Signer whose
// every signature is made inside the TPM.
//
// provision itself uses this package for the same files (creating the key,
// signing its CSR and every handshake), so the agent and provision can never
// disagree about what key.pem means.
//
// # The TPM key
//
// [CreateTPMKey] makes a NIST P-256 signing key under the TCG ECC storage
// key template H-2 (the storage root key is derived from the TPM's owner
// seed on demand and flushed after use: nothing is left in the TPM's
// persistent memory and no handle is claimed). The key is fixedTPM and
// fixedParent (the TPM refuses to duplicate it), sign-only, with an empty
// authorization value and noDA (another program's wrong TPM passwords, which
// put the TPM into dictionary-attack lockout, do not stop it signing). The
// file it writes is the one the OpenSSL 3 tpm2 provider reads (parent
// 0x40000001, no optional description field).
//
// Each signature re-derives the storage key, loads the wrapped key, signs
// with a salted HMAC session and flushes both: about 2 ms on a software TPM,
// far more on hardware (hundreds of milliseconds per signature are common),
// so an agent should keep its connections alive and resume TLS sessions
// rather than handshake per request.
//
// # Naming the TPM
//
// [WithTPM] takes a device path (default [DefaultTPM], /dev/tpmrm0, the
// kernel's resource manager) or, for tests and development, a software
// TPM's socket in tpm2-tss's TCTI syntax: "swtpm:path=/run/swtpm/sock" or
// "swtpm:host=127.0.0.1,port=2321" (swtpm socket mode, raw command
// channel), so the same string works for tpm2-tools (TPM2TOOLS_TCTI) and
// the OpenSSL provider (TPM2OPENSSL_TCTI). A TPM whose owner hierarchy has a
// password needs it to derive the storage key: [WithOwnerAuthFile].
//
// # Failures
//
// Every TPM failure is an [*Error] with a [Kind] that names what to do:
// the TPM cannot be reached ([NoDevice], [NoAccess]), it is in
// dictionary-attack lockout ([Lockout]), its owner password is needed or
// wrong ([OwnerAuth]), or the key no longer loads because the TPM was
// cleared or key.pem was made by another TPM ([KeyLost]).
//
// The module depends only on go-tpm and go-tpm-keyfiles (and, through
// them, golang.org/x/crypto and golang.org/x/sys), so an agent importing it
// does not pull in provision's graph.
package nodekey
