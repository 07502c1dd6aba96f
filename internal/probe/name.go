package probe

import (
	"crypto/x509/pkix"
	"encoding/asn1"
)

type pkixName struct{ pkix.RDNSequence }

func (n pkixName) String() string {
	var name pkix.Name
	name.FillFromRDNSequence(&n.RDNSequence)
	return name.String()
}

func asn1Unmarshal(b []byte, n *pkixName) ([]byte, error) {
	return asn1.Unmarshal(b, &n.RDNSequence)
}
