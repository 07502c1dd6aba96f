// Package arch holds ARCHITECTURE.md to the code. Its tests read the
// document (the floors, the code map's "must not" column, the table of
// questions and their one place, the invariants, the files to start from)
// and the production source (parsed, never run), and fail where the two
// part: a package on no floor or importing upward, a row with no check, a
// check whose row is gone, a rule the code breaks.
//
// Why: a map that no test holds drifts, and the rules it states are the
// ones a change breaks without noticing (issue 33 found three quarters of
// the "must not" rows unchecked, and two of them broken).
//
// The package holds only tests; this file carries the documentation.
package arch
