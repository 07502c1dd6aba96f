package ingress

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Configuration generators for the real programs. Each writes its files into
// in.Dir, fills in.Forwarding and returns the program's arguments.

func writeNginx(in *Ingress, o Options) ([]string, error) {
	d := in.Dir
	if err := nginxTempDirs(d); err != nil {
		return nil, err
	}
	var b strings.Builder
	if err := nginxHTTPHead(&b, d, o); err != nil {
		return nil, err
	}
	listen := in.Addr + " ssl"
	if o.PlainHTTP {
		listen = in.Addr
	}
	if o.Default404 {
		nginxDefaultServer(&b, listen, o)
	}
	if err := nginxNodeAPIServer(&b, listen, o); err != nil {
		return nil, err
	}
	b.WriteString("}\n")
	conf := filepath.Join(d, "nginx.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return nil, fmt.Errorf("writing nginx config: %w", err)
	}
	in.Forwarding = ForwardingFor(Nginx, o)
	// -e stderr keeps nginx from opening the system error log before it has
	// read the configuration.
	return []string{"-e", "stderr", "-p", d + "/", "-c", conf, "-g", "daemon off;"}, nil
}

// nginxTempDirs creates the temporary and log directories the generated
// configuration points nginx at, under d.
func nginxTempDirs(d string) error {
	for _, sub := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return fmt.Errorf("creating nginx dir: %w", err)
		}
	}
	return nil
}

// nginxHTTPHead writes everything before the first server block: the main
// context (user, pid, logs, worker connections) and the http context's
// paths and protocols, leaving the http block open.
func nginxHTTPHead(b *strings.Builder, d string, o Options) error {
	if os.Geteuid() == 0 {
		// As root nginx would switch its worker to "nobody", which cannot
		// enter the 0700 temporary directory.
		b.WriteString("user root root;\n")
	}
	conns := 64
	if o.WorkerConnections > 0 {
		conns = o.WorkerConnections
	}
	fmt.Fprintf(b, `worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections %[2]d; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
`, d, conns)
	return nginxProtocols(b, o)
}

// nginxProtocols writes ssl_protocols when MinTLS or MaxTLS pins them.
func nginxProtocols(b *strings.Builder, o Options) error {
	if o.MinTLS == "" && o.MaxTLS == "" {
		return nil
	}
	protos, err := versionRange(o.MinTLS, o.MaxTLS, func(v string) string {
		if v == "1.0" {
			return "TLSv1"
		}
		return "TLSv" + v
	})
	if err != nil {
		return err
	}
	// At http level: nginx negotiates the version with the listening
	// socket's default server before SNI selects a server block, so an
	// ssl_protocols only in the node API's server block is ignored.
	fmt.Fprintf(b, "    ssl_protocols %s;\n", strings.Join(protos, " "))
	return nil
}

// nginxDefaultServer writes the default_server answering 404 for any other
// name (Default404).
func nginxDefaultServer(b *strings.Builder, listen string, o Options) {
	fmt.Fprintf(b, `    server {
        listen %s default_server;
        server_name _;
        ssl_certificate %s;
        ssl_certificate_key %s;
        return 404;
    }
`, listen, o.ServerCertFile, o.ServerKeyFile)
}

// nginxVerifyClient is ssl_verify_client's value for a client-auth mode.
func nginxVerifyClient(mode ClientAuthMode) (string, error) {
	verify := map[ClientAuthMode]string{ClientAuthRequired: "on", ClientAuthOptional: "optional",
		ClientAuthRequest: "optional_no_ca", ClientAuthOff: "off"}[mode]
	if verify == "" {
		return "", fmt.Errorf("nginx: unknown client auth mode %q", mode)
	}
	return verify, nil
}

// nginxNodeAPIServer writes the server block for Hostname: TLS and client
// authentication, then its one location.
func nginxNodeAPIServer(b *strings.Builder, listen string, o Options) error {
	verify, err := nginxVerifyClient(o.ClientAuth)
	if err != nil {
		return err
	}
	depth := 3
	if o.VerifyDepth != nil {
		depth = *o.VerifyDepth
	}
	fmt.Fprintf(b, `    server {
        listen %s;
        server_name %s;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_verify_client %s;
        ssl_client_certificate %s;
        # root -> intermediate -> leaf needs depth 1 (nginx's default);
        # 3 leaves room. Depth 0 refuses it (misconfig_test.go).
        ssl_verify_depth %d;
`, listen, o.Hostname, o.ServerCertFile, o.ServerKeyFile, verify, o.ClientCAFile, depth)
	if o.RejectHandshake {
		b.WriteString("        ssl_reject_handshake on;\n")
	}
	nginxLocation(b, o)
	b.WriteString("    }\n")
	return nil
}

// nginxLocation writes the location that proxies to the upstream (or
// redirects), with the forwarded certificate headers.
func nginxLocation(b *strings.Builder, o Options) {
	location, proxyPass := "/", "http://"+o.upstreamHostPort()
	if o.StripPrefix != "" {
		// The classic trap: a proxy_pass with a URI replaces the part of
		// the path the location matched.
		location, proxyPass = strings.TrimSuffix(o.StripPrefix, "/")+"/", proxyPass+"/"
	}
	fmt.Fprintf(b, `        location %s {
`, location)
	if o.RedirectTo != "" {
		fmt.Fprintf(b, "            return 301 %s;\n", o.RedirectTo)
	}
	fmt.Fprintf(b, `            proxy_pass %s;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
`, proxyPass)
	if !o.NoForwardCert {
		fmt.Fprintf(b, "            proxy_set_header %s $ssl_client_escaped_cert;\n", NginxCertHeader)
		fmt.Fprintf(b, "            proxy_set_header %s $ssl_client_verify;\n", NginxVerifyHeader)
	}
	if o.UpstreamTimeout > 0 {
		fmt.Fprintf(b, "            proxy_read_timeout %dms;\n", o.UpstreamTimeout.Milliseconds())
	}
	b.WriteString("        }\n")
}

func writeHAProxy(in *Ingress, o Options) ([]string, error) {
	d := in.Dir
	// HAProxy wants certificate and key in one file.
	crt, err := os.ReadFile(o.ServerCertFile)
	if err != nil {
		return nil, fmt.Errorf("reading server certificate: %w", err)
	}
	key, err := os.ReadFile(o.ServerKeyFile)
	if err != nil {
		return nil, fmt.Errorf("reading server key: %w", err)
	}
	combined := filepath.Join(d, "server.pem")
	if err := os.WriteFile(combined, append(append(crt, '\n'), key...), 0o600); err != nil {
		return nil, fmt.Errorf("writing haproxy certificate: %w", err)
	}
	timeoutServer := "60s"
	if o.UpstreamTimeout > 0 {
		timeoutServer = strconv.FormatInt(o.UpstreamTimeout.Milliseconds(), 10) + "ms"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `global
    log stderr format raw local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 60s
    timeout server %s
frontend node_api
    bind %s
`, timeoutServer, haproxyBind(in.Addr, combined, o))
	if o.MinTLS != "" || o.MaxTLS != "" {
		if _, err := versionRange(o.MinTLS, o.MaxTLS, nil); err != nil {
			return nil, err
		}
	}
	if o.VerifyDepth != nil {
		return nil, errors.New("haproxy: VerifyDepth is an nginx knob")
	}
	if o.ClientAuth != ClientAuthRequired && o.ClientAuth != ClientAuthOptional && o.ClientAuth != ClientAuthRequest && o.ClientAuth != ClientAuthOff {
		return nil, fmt.Errorf("haproxy: unknown client auth mode %q", o.ClientAuth)
	}
	if o.RedirectTo != "" {
		fmt.Fprintf(&b, "    http-request redirect location %s code 301\n", o.RedirectTo)
	}
	if o.StripPrefix != "" {
		fmt.Fprintf(&b, "    http-request replace-path ^%s(/.*) \\1\n", strings.TrimSuffix(o.StripPrefix, "/"))
	}
	if !o.NoForwardCert {
		fmt.Fprintf(&b, "    http-request set-header %s %%[ssl_c_der,base64]\n", HAProxyCertHeader)
		fmt.Fprintf(&b, "    http-request set-header %s %%[ssl_c_chain_der,base64]\n", HAProxyChainHeader)
		fmt.Fprintf(&b, "    http-request set-header %s %%[ssl_c_used]\n", HAProxyUsedHeader)
		fmt.Fprintf(&b, "    http-request set-header %s %%[ssl_c_verify]\n", HAProxyVerifyHeader)
	}
	if o.Default404 {
		fmt.Fprintf(&b, "    acl node_api_host hdr(host) -i %s %s:%d\n", o.Hostname, o.Hostname, in.Port)
		b.WriteString("    http-request return status 404 content-type \"text/plain; charset=utf-8\" string \"404 page not found\" if !node_api_host\n")
	}
	fmt.Fprintf(&b, `    default_backend node_api
backend node_api
    server api %s
`, o.upstreamHostPort())
	cfg := filepath.Join(d, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		return nil, fmt.Errorf("writing haproxy config: %w", err)
	}
	in.Forwarding = ForwardingFor(HAProxy, o)
	return []string{"-f", cfg, "-db"}, nil
}

// haproxyBind is the frontend's bind line.
func haproxyBind(addr, combined string, o Options) string {
	if o.PlainHTTP {
		return addr
	}
	line := addr + " ssl crt " + combined
	if o.RejectHandshake {
		line += " strict-sni"
	}
	switch o.ClientAuth {
	case ClientAuthRequired:
		line += " verify required"
	case ClientAuthOptional:
		line += " verify optional"
	case ClientAuthRequest:
		line += " verify optional ca-ignore-err all crt-ignore-err all"
	case ClientAuthOff:
		line += " verify none"
	}
	line += " ca-file " + o.ClientCAFile
	if o.MinTLS != "" {
		line += " ssl-min-ver " + haproxyVersion(o.MinTLS)
	}
	if o.MaxTLS != "" {
		line += " ssl-max-ver " + haproxyVersion(o.MaxTLS)
	}
	return line
}

func haproxyVersion(v string) string { return "TLSv" + v }

// optionTLSVersions are the versions MinTLS and MaxTLS may name, in order.
var optionTLSVersions = []string{"1.0", "1.1", "1.2", "1.3"}

// versionRange lists the versions from min to max ("" is the first or the
// last), each spelled by name (nil: as given).
func versionRange(min, max string, name func(string) string) ([]string, error) {
	lo, hi := 0, len(optionTLSVersions)-1
	for i, v := range optionTLSVersions {
		if v == min {
			lo = i
		}
		if v == max {
			hi = i
		}
	}
	for _, v := range []string{min, max} {
		if v != "" && !contains(optionTLSVersions, v) {
			return nil, fmt.Errorf("ingress options: unknown TLS version %q (want one of %v)", v, optionTLSVersions)
		}
	}
	if lo > hi {
		return nil, fmt.Errorf("ingress options: MinTLS %s above MaxTLS %s", min, max)
	}
	var out []string
	for _, v := range optionTLSVersions[lo : hi+1] {
		if name != nil {
			v = name(v)
		}
		out = append(out, v)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// writeCaddy writes a JSON configuration (the Caddyfile cannot express a
// fallback TLS policy and a catch-all 404 as directly): admin API off, no
// automatic HTTPS, the given certificate, client auth on the Hostname SNI.
func writeCaddy(in *Ingress, o Options) ([]string, error) {
	d := in.Dir
	if o.VerifyDepth != nil {
		return nil, errors.New("caddy: VerifyDepth is an nginx knob")
	}
	policies, err := caddyTLSPolicies(o)
	if err != nil {
		return nil, err
	}
	server := jsonObject{
		"listen":          []string{in.Addr},
		"protocols":       []string{"h1", "h2"}, // no HTTP/3 UDP listener
		"automatic_https": jsonObject{"disable": true},
		"routes":          caddyRoutes(o),
		"logs":            jsonObject{},
	}
	if !o.PlainHTTP {
		server["tls_connection_policies"] = policies
	}
	js, err := json.MarshalIndent(caddyConfig(d, o, server), "", "  ")
	if err != nil {
		return nil, err
	}
	file := filepath.Join(d, "caddy.json")
	if err := os.WriteFile(file, js, 0o644); err != nil {
		return nil, fmt.Errorf("writing caddy config: %w", err)
	}
	in.Forwarding = ForwardingFor(Caddy, o)
	return []string{"run", "--config", file}, nil
}

// jsonObject is a JSON object of Caddy's configuration.
type jsonObject = map[string]any

// caddyRoutes are the node API's route on Hostname and, with Default404,
// the catch-all 404 after it.
func caddyRoutes(o Options) []jsonObject {
	routes := []jsonObject{{
		"match":    []jsonObject{{"host": []string{o.Hostname}}},
		"handle":   caddyHandlers(o),
		"terminal": true,
	}}
	if o.Default404 {
		routes = append(routes, jsonObject{"handle": []jsonObject{{
			"handler":     "static_response",
			"status_code": 404,
			"headers":     jsonObject{"Content-Type": []string{"text/plain; charset=utf-8"}},
			"body":        "404 page not found\n",
		}}})
	}
	return routes
}

// caddyHandlers is the node API route's handler chain: the reverse proxy,
// after a prefix strip (StripPrefix), or instead a redirect (RedirectTo).
func caddyHandlers(o Options) []jsonObject {
	if o.RedirectTo != "" {
		return []jsonObject{{"handler": "static_response", "status_code": 301, "headers": jsonObject{"Location": []string{o.RedirectTo}}}}
	}
	proxy := caddyProxy(o)
	if o.StripPrefix != "" {
		// What handle_path does: strip the prefix, then proxy.
		return []jsonObject{{"handler": "rewrite", "strip_path_prefix": strings.TrimSuffix(o.StripPrefix, "/")}, proxy}
	}
	return []jsonObject{proxy}
}

// caddyProxy is the reverse_proxy handler, with the certificate header and
// the upstream timeout.
func caddyProxy(o Options) jsonObject {
	proxy := jsonObject{
		"handler":   "reverse_proxy",
		"upstreams": []jsonObject{{"dial": o.upstreamHostPort()}},
	}
	if !o.NoForwardCert {
		proxy["headers"] = jsonObject{"request": jsonObject{"set": jsonObject{
			CaddyCertHeader: []string{"{http.request.tls.client.certificate_der_base64}"},
		}}}
	}
	if o.UpstreamTimeout > 0 {
		proxy["transport"] = jsonObject{"protocol": "http", "response_header_timeout": o.UpstreamTimeout.String()}
	}
	return proxy
}

// caddyClientAuth is the node API policy's client_authentication, nil for
// ClientAuthOff.
func caddyClientAuth(o Options) (jsonObject, error) {
	clientAuth := jsonObject{
		"trusted_ca_certs_pem_files": []string{o.ClientCAFile},
		"mode":                       "require_and_verify",
	}
	switch o.ClientAuth {
	case ClientAuthRequired:
	case ClientAuthOptional:
		clientAuth["mode"] = "verify_if_given"
	case ClientAuthRequest:
		clientAuth["mode"] = "request"
	case ClientAuthOff:
		clientAuth = nil
	default:
		return nil, fmt.Errorf("caddy: unknown client auth mode %q", o.ClientAuth)
	}
	return clientAuth, nil
}

// caddyTLSPolicies are the TLS connection policies: the node API's on the
// Hostname SNI (client auth, protocol versions) and the fallback for any
// other SNI; with RejectHandshake only another name's.
func caddyTLSPolicies(o Options) ([]jsonObject, error) {
	clientAuth, err := caddyClientAuth(o)
	if err != nil {
		return nil, err
	}
	if o.RejectHandshake {
		// No site for Hostname: the only policy is another name's.
		return []jsonObject{{
			"match":                 jsonObject{"sni": []string{"other-site.invalid"}},
			"certificate_selection": jsonObject{"any_tag": []string{"node-api"}},
		}}, nil
	}
	nodeAPIPolicy := jsonObject{
		"match":                 jsonObject{"sni": []string{o.Hostname}},
		"certificate_selection": jsonObject{"any_tag": []string{"node-api"}},
	}
	if clientAuth != nil {
		nodeAPIPolicy["client_authentication"] = clientAuth
	}
	if o.MinTLS != "" {
		nodeAPIPolicy["protocol_min"] = "tls" + o.MinTLS
	}
	if o.MaxTLS != "" {
		nodeAPIPolicy["protocol_max"] = "tls" + o.MaxTLS
	}
	return []jsonObject{
		nodeAPIPolicy,
		{
			// No or another SNI: serve the same certificate,
			// no client auth, so routing can answer.
			"certificate_selection": jsonObject{"any_tag": []string{"node-api"}},
			"default_sni":           o.Hostname,
		},
	}, nil
}

// caddyConfig is the whole configuration around the one HTTP server:
// admin API off, storage and logs, the certificate to load.
func caddyConfig(d string, o Options, server jsonObject) jsonObject {
	return jsonObject{
		"admin":   jsonObject{"disabled": true},
		"storage": jsonObject{"module": "file_system", "root": filepath.Join(d, "caddy-data")},
		"logging": jsonObject{"logs": jsonObject{"default": jsonObject{
			"writer":  jsonObject{"output": "stderr"},
			"encoder": jsonObject{"format": "console"},
			"level":   "DEBUG",
		}}},
		"apps": jsonObject{
			"tls": jsonObject{"certificates": jsonObject{"load_files": []jsonObject{{
				"certificate": o.ServerCertFile, "key": o.ServerKeyFile, "tags": []string{"node-api"},
			}}}},
			"http": jsonObject{
				"grace_period": (2 * time.Second).String(),
				"servers":      jsonObject{"node_api": server},
			},
		},
	}
}
