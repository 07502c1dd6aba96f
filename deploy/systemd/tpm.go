package systemd

import (
	_ "embed"
	"strings"
)

// tpmDropIn is tpm.conf: the units' access to /dev/tpmrm0.
//
//go:embed tpm.conf
var tpmDropIn string

// DefaultTPMDevice is the device tpm.conf opens.
const DefaultTPMDevice = "/dev/tpmrm0"

// TPMGroup is the group tpm.conf makes the units members of
// (SupplementaryGroups=), the device's group under Debian's tpm-udev rules
// (tss:tss 0660). That package creates it; where it is missing the units
// do not start at all (status 216/GROUP).
const TPMGroup = "tss"

// TPMDropIn is the drop-in provision's units need for a key in the TPM at
// device (tpm.conf, with its DeviceAllow= naming device).
func TPMDropIn(device string) string {
	return strings.Replace(tpmDropIn, "DeviceAllow="+DefaultTPMDevice+" rw", "DeviceAllow="+device+" rw", 1)
}
