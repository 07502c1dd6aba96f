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

// TPMDropIn is the drop-in provision's units need for a key in the TPM at
// device (tpm.conf, with its DeviceAllow= naming device).
func TPMDropIn(device string) string {
	return strings.Replace(tpmDropIn, "DeviceAllow="+DefaultTPMDevice+" rw", "DeviceAllow="+device+" rw", 1)
}
