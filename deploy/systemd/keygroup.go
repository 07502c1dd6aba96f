package systemd

import (
	_ "embed"
	"strings"
)

// keyGroupDropIn is key-group.conf: the units' membership of
// paths.key_group's group.
//
//go:embed key-group.conf
var keyGroupDropIn string

// KeyGroupDropIn is the drop-in provision's units need for paths.key_group
// = group (key-group.conf, its SupplementaryGroups= naming group).
func KeyGroupDropIn(group string) string {
	return strings.Replace(keyGroupDropIn, "\nSupplementaryGroups=node-agent\n", "\nSupplementaryGroups="+group+"\n", 1)
}
