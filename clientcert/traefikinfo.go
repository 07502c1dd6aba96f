package clientcert

import (
	"net/url"
	"strconv"
	"strings"
	"time"
)

// TraefikCertInfo is one certificate's entry in Traefik's
// X-Forwarded-Tls-Client-Cert-Info header. It is supplementary detail for
// logs only and never an identity: Traefik writes the values without any
// escaping, so a DN containing a quote cannot be parsed reliably, and none of
// it is signed. Only the fields Traefik was configured to send are set.
type TraefikCertInfo struct {
	Subject      string    // Traefik's own DN form, e.g. "O=Acme,CN=node-01"
	Issuer       string    // same form
	SerialNumber string    // decimal
	NotBefore    time.Time // zero if not sent
	NotAfter     time.Time // zero if not sent
	SANs         []string  // DNS, e-mail, IP, URI SANs, in that order
}

// ParseTraefikInfo parses an X-Forwarded-Tls-Client-Cert-Info value as
// Traefik sends it (url.QueryEscape of `Key="value";Key="value"`, one group
// per certificate, groups joined by ","). It splits quote-aware, so commas
// and semicolons inside quoted DNs are kept.
func ParseTraefikInfo(v string) ([]TraefikCertInfo, error) {
	f := FormatTraefik
	s, err := url.QueryUnescape(strings.TrimSpace(v))
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "info: URL unescape: %v", err)
	}
	if s == "" {
		return nil, nil
	}
	certs, err := splitQuoted(s, ',', false)
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "info: %v", err)
	}
	out := make([]TraefikCertInfo, 0, len(certs))
	for i, c := range certs {
		fields, err := splitQuoted(c, ';', false)
		if err != nil {
			return nil, errorf(ReasonMalformed, f, "info cert %d: %v", i, err)
		}
		var ci TraefikCertInfo
		for _, fl := range fields {
			k, val, ok := strings.Cut(fl, "=")
			if !ok || len(val) < 2 || val[0] != '"' || val[len(val)-1] != '"' {
				return nil, errorf(ReasonMalformed, f, "info cert %d: field %q is not Key=\"value\"", i, clip(fl))
			}
			val = val[1 : len(val)-1]
			switch k {
			case "Subject":
				ci.Subject = val
			case "Issuer":
				ci.Issuer = val
			case "SerialNumber":
				ci.SerialNumber = val
			case "NB", "NA":
				n, err := strconv.ParseInt(val, 10, 64)
				if err != nil {
					return nil, errorf(ReasonMalformed, f, "info cert %d: %s: %v", i, k, err)
				}
				t := time.Unix(n, 0).UTC()
				if k == "NB" {
					ci.NotBefore = t
				} else {
					ci.NotAfter = t
				}
			case "SAN":
				if val != "" {
					ci.SANs = strings.Split(val, ",")
				}
			}
		}
		out = append(out, ci)
	}
	return out, nil
}
