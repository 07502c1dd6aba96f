// Package state is provision's record of a node, the files under state_dir
// other than the hand-off directory (internal/tasks): the done receipt and
// its per-install marker (receipt.json, done/<machine-id>), the enrollment
// marker that tells a burnt token from a bad one (enroll-pending.json), the
// record of a key once found readable by others (key-exposed.json), the
// renew record (renew.json), and the last failed bootstrap
// (last-failure.json), by which the next run knows it is a restart.
//
// Why one package: bootstrap and renew both write the receipt and the renew
// record (whatever replaced the credentials last must be what the receipt
// names), and verify, status and the metrics read them. Every file here is
// written atomically (temp file, fsync, rename, fsync of the directory), so
// a kill leaves the old record or the new one.
package state
