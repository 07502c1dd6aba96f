package system

// Layout is every name provision writes in its own directories: the table
// ClaimDir judges by, for what else must know them all. The package's
// purge (packaging/scripts/postrm) removes exactly these at the default
// paths, and packaging's test checks its list against this one and plants
// every name before it purges.
type Layout struct {
	Files      []string // regular files in state_dir: the run lock and the records
	Dirs       []string // provision's own directories in state_dir
	Creds      []string // pki_dir's stable names (links into current/)
	Links      []string // links naming generations
	Mark       string   // the file that marks each directory provision made (OwnMark)
	GenPrefix  string   // starts a generation directory's name in pki_dir
	TempPrefix string   // starts every temporary file's name
}

// OwnLayout returns the table (copies: callers cannot change ClaimDir's).
func OwnLayout() Layout {
	return Layout{
		Files: append([]string(nil), ownFiles...), Dirs: append([]string(nil), ownDirs...),
		Creds: append([]string(nil), credFiles...), Links: append([]string(nil), genLinks...),
		Mark: OwnMark, GenPrefix: genPrefix, TempPrefix: TempPrefix,
	}
}
