package clientcert

import "strings"

// XFCCElement is one element of an Envoy x-forwarded-client-cert header: the
// client certificate details one proxy hop added. Values are unquoted (\"
// becomes "), but Cert and Chain are still URL-encoded PEM, as on the wire.
type XFCCElement struct {
	By      []string // URI SAN(s) of the proxy that added the element
	Hash    string   // hex SHA-256 of the client certificate DER
	Cert    string   // URL-encoded PEM leaf
	Chain   string   // URL-encoded PEM chain, leaf included
	Subject string   // subject DN as Envoy prints it
	URI     []string // URI SANs of the client certificate
	DNS     []string // DNS SANs of the client certificate
}

// ParseXFCC parses an x-forwarded-client-cert value into its elements, in
// header order (the last was added by the proxy nearest to the receiver).
// Elements are separated by "," and pairs by ";" outside double quotes; keys
// are case-insensitive; a quoted value may contain \" for a quote. Unknown
// keys are ignored; a repeated single-valued key is malformed.
func ParseXFCC(v string) ([]XFCCElement, error) {
	f := FormatEnvoy
	raw, err := splitQuoted(v, ',', true)
	if err != nil {
		return nil, errorf(ReasonMalformed, f, "XFCC: %v", err)
	}
	els := make([]XFCCElement, 0, len(raw))
	for i, r := range raw {
		if strings.TrimSpace(r) == "" {
			return nil, errorf(ReasonMalformed, f, "XFCC element %d is empty", i)
		}
		pairs, err := splitQuoted(r, ';', true)
		if err != nil {
			return nil, errorf(ReasonMalformed, f, "XFCC element %d: %v", i, err)
		}
		var el XFCCElement
		for _, p := range pairs {
			p = strings.TrimSpace(p)
			if p == "" {
				continue // tolerate a trailing ";"
			}
			k, val, ok := strings.Cut(p, "=")
			k = strings.TrimSpace(k)
			if !ok || k == "" || strings.ContainsAny(k, "\" \t") {
				return nil, errorf(ReasonMalformed, f, "XFCC element %d: pair %q is not Key=Value", i, clip(p))
			}
			uv, err := unquoteXFCC(strings.TrimSpace(val))
			if err != nil {
				return nil, errorf(ReasonMalformed, f, "XFCC element %d key %s: %v", i, k, err)
			}
			setOnce := func(dst *string) error {
				if *dst != "" {
					return errorf(ReasonMalformed, f, "XFCC element %d: key %s repeated", i, k)
				}
				*dst = uv
				return nil
			}
			var e error
			switch strings.ToLower(k) {
			case "by":
				el.By = append(el.By, uv)
			case "hash":
				e = setOnce(&el.Hash)
			case "cert":
				e = setOnce(&el.Cert)
			case "chain":
				e = setOnce(&el.Chain)
			case "subject":
				e = setOnce(&el.Subject)
			case "uri":
				el.URI = append(el.URI, uv)
			case "dns":
				el.DNS = append(el.DNS, uv)
			}
			if e != nil {
				return nil, e
			}
		}
		els = append(els, el)
	}
	return els, nil
}

func unquoteXFCC(v string) (string, error) {
	if !strings.HasPrefix(v, "\"") {
		if strings.Contains(v, "\"") {
			return "", simpleErr("stray double quote in unquoted value")
		}
		return v, nil
	}
	if len(v) < 2 || v[len(v)-1] != '"' {
		return "", simpleErr("quoted value does not end with a quote")
	}
	in := v[1 : len(v)-1]
	var b strings.Builder
	for i := 0; i < len(in); i++ {
		c := in[i]
		switch c {
		case '\\':
			if i+1 >= len(in) {
				return "", simpleErr("dangling backslash")
			}
			i++
			b.WriteByte(in[i])
		case '"':
			return "", simpleErr("unescaped double quote inside quoted value")
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}
