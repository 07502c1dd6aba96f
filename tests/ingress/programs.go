package ingress

import (
	"encoding/json"
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
	for _, sub := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return nil, fmt.Errorf("creating nginx dir: %w", err)
		}
	}
	var b strings.Builder
	if os.Geteuid() == 0 {
		// As root nginx would switch its worker to "nobody", which cannot
		// enter the 0700 temporary directory.
		b.WriteString("user root root;\n")
	}
	fmt.Fprintf(&b, `worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
`, d)
	listen := in.Addr + " ssl"
	if o.Default404 {
		fmt.Fprintf(&b, `    server {
        listen %s default_server;
        server_name _;
        ssl_certificate %s;
        ssl_certificate_key %s;
        return 404;
    }
`, listen, o.ServerCertFile, o.ServerKeyFile)
	}
	fmt.Fprintf(&b, `    server {
        listen %s;
        server_name %s;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_verify_client on;
        ssl_client_certificate %s;
        # root -> intermediate -> leaf; nginx's default depth of 1 refuses it.
        ssl_verify_depth 3;
        location / {
            proxy_pass http://%s;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
`, listen, o.Hostname, o.ServerCertFile, o.ServerKeyFile, o.ClientCAFile, o.upstreamHostPort())
	if !o.NoForwardCert {
		fmt.Fprintf(&b, "            proxy_set_header %s $ssl_client_escaped_cert;\n", NginxCertHeader)
		fmt.Fprintf(&b, "            proxy_set_header %s $ssl_client_verify;\n", NginxVerifyHeader)
	}
	if o.UpstreamTimeout > 0 {
		fmt.Fprintf(&b, "            proxy_read_timeout %dms;\n", o.UpstreamTimeout.Milliseconds())
	}
	b.WriteString("        }\n    }\n}\n")
	conf := filepath.Join(d, "nginx.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return nil, fmt.Errorf("writing nginx config: %w", err)
	}
	in.Forwarding = ForwardingFor(Nginx, o)
	// -e stderr keeps nginx from opening the system error log before it has
	// read the configuration.
	return []string{"-e", "stderr", "-p", d + "/", "-c", conf, "-g", "daemon off;"}, nil
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
    bind %s ssl crt %s verify required ca-file %s
`, timeoutServer, in.Addr, combined, o.ClientCAFile)
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

// writeCaddy writes a JSON configuration (the Caddyfile cannot express a
// fallback TLS policy and a catch-all 404 as directly): admin API off, no
// automatic HTTPS, the given certificate, client auth on the Hostname SNI.
func writeCaddy(in *Ingress, o Options) ([]string, error) {
	d := in.Dir
	type m = map[string]any
	proxy := m{
		"handler":   "reverse_proxy",
		"upstreams": []m{{"dial": o.upstreamHostPort()}},
	}
	if !o.NoForwardCert {
		proxy["headers"] = m{"request": m{"set": m{
			CaddyCertHeader: []string{"{http.request.tls.client.certificate_der_base64}"},
		}}}
	}
	if o.UpstreamTimeout > 0 {
		proxy["transport"] = m{"protocol": "http", "response_header_timeout": o.UpstreamTimeout.String()}
	}
	routes := []m{{
		"match":    []m{{"host": []string{o.Hostname}}},
		"handle":   []m{proxy},
		"terminal": true,
	}}
	if o.Default404 {
		routes = append(routes, m{"handle": []m{{
			"handler":     "static_response",
			"status_code": 404,
			"headers":     m{"Content-Type": []string{"text/plain; charset=utf-8"}},
			"body":        "404 page not found\n",
		}}})
	}
	cfg := m{
		"admin":   m{"disabled": true},
		"storage": m{"module": "file_system", "root": filepath.Join(d, "caddy-data")},
		"logging": m{"logs": m{"default": m{
			"writer":  m{"output": "stderr"},
			"encoder": m{"format": "console"},
			"level":   "DEBUG",
		}}},
		"apps": m{
			"tls": m{"certificates": m{"load_files": []m{{
				"certificate": o.ServerCertFile, "key": o.ServerKeyFile, "tags": []string{"node-api"},
			}}}},
			"http": m{
				"grace_period": (2 * time.Second).String(),
				"servers": m{"node_api": m{
					"listen":          []string{in.Addr},
					"protocols":       []string{"h1", "h2"}, // no HTTP/3 UDP listener
					"automatic_https": m{"disable": true},
					"tls_connection_policies": []m{
						{
							"match":                 m{"sni": []string{o.Hostname}},
							"certificate_selection": m{"any_tag": []string{"node-api"}},
							"client_authentication": m{
								"trusted_ca_certs_pem_files": []string{o.ClientCAFile},
								"mode":                       "require_and_verify",
							},
						},
						{
							// No or another SNI: serve the same certificate,
							// no client auth, so routing can answer.
							"certificate_selection": m{"any_tag": []string{"node-api"}},
							"default_sni":           o.Hostname,
						},
					},
					"routes": routes,
					"logs":   m{},
				}},
			},
		},
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
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
