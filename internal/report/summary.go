package report

import (
	"fmt"
	"strings"
	"time"
)

// The summaries of a run's outcome, worded here once: the one line a
// report carries when a command did what it set out to do, or stopped on
// purpose (not due, a new set kept aside or published on the liveness
// rule). What failed is worded where it is classified (diag, lifecycle);
// these are the outcomes no classifier names. Commands hand in facts, never
// sentences.

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// Done is bootstrap's summary: the node polls.
func Done(nodeID, url, serial string) string {
	return fmt.Sprintf("done: %s polls tasks/wait through %s with certificate serial %s", nodeID, url, serial)
}

// Renewed is renew's summary after it published a renewed certificate.
func Renewed(serial, previous string, notAfter, dueAt time.Time, url string) string {
	return fmt.Sprintf("renewed: serial %s replaced %s, valid until %s, next renewal from %s", serial, previous, stamp(notAfter), stamp(dueAt)) + proven(url)
}

// Refreshed is renew's summary after it published ca.pem refreshed from
// the CA's roots, the certificate unchanged.
func Refreshed(current, federated int, serial string, dueAt time.Time, url string) string {
	return fmt.Sprintf("ca.pem refreshed from the CA's %d current and %d federated root(s); the certificate (serial %s) is not due until %s", current, federated, serial, stamp(dueAt)) + proven(url)
}

func proven(url string) string {
	return "; proven by tasks/wait through " + url + " before it was published"
}

// NotDue is renew's summary when the certificate is not due.
func NotDue(serial string, dueAt, renewAfter, notAfter time.Time) string {
	return fmt.Sprintf("not due: the certificate (serial %s) is due for renewal from %s (renewal point %s plus this node's splay); it expires at %s", serial, stamp(dueAt), stamp(renewAfter), stamp(notAfter))
}

// DueSince is renew --check's summary of a certificate due.
func DueSince(dueAt, renewAfter, notAfter time.Time) string {
	return fmt.Sprintf("renewal due since %s (renewal point %s plus this node's splay); the certificate expires at %s", stamp(dueAt), stamp(renewAfter), stamp(notAfter))
}

// DueExpired is renew --check's summary of an expired certificate that
// may be renewed after expiry.
func DueExpired(notAfter time.Time) string {
	return fmt.Sprintf("renewal due: the certificate expired at %s; renew renews it after expiry where the CA allows it (else a fresh token is needed)", stamp(notAfter))
}

// Healthy is status's summary of a usable identity with nothing pending.
func Healthy(serial string, notAfter, dueAt time.Time) string {
	return fmt.Sprintf("certificate serial %s valid until %s; renewal due from %s", serial, stamp(notAfter), stamp(dueAt))
}

// PublishedUnproven is the summary of a new set published without a
// passing proof, under the liveness rule why; proof is its proof's
// failure.
func PublishedUnproven(serial string, notAfter time.Time, why, proof string) string {
	return fmt.Sprintf("new certificate (serial %s, valid until %s) published without a passing proof: %s; its proof failed: %s",
		serial, stamp(notAfter), why, strings.TrimSuffix(proof, "."))
}

// KeptAside is the summary of a new set not published (why), its proof's
// failure proof, the installed set (serial and expiry; "" when none) still
// current, and the new set kept in dir for the next run.
func KeptAside(why, proof, serial string, notAfter time.Time, dir string) string {
	what := "the installed set stays current"
	if serial != "" {
		what = fmt.Sprintf("the installed certificate (serial %s, valid until %s) stays current", serial, stamp(notAfter))
	}
	return fmt.Sprintf("new certificate not published (%s): %s; %s, and the new set is kept aside in %s and proven again by the next run",
		why, strings.TrimSuffix(proof, "."), what, dir)
}
