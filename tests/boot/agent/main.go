// Command agent stands in for a node-agent that does not run as root, in
// tests/boot's booted nodes: run by a unit of its own as user agent (a
// member of paths.key_group's group), it reads the node's identity the way
// the README tells a node-agent to (key.pem and cert.pem through
// pki_dir/current/, ca.pem beside them), polls tasks/wait with it over
// mTLS by hostname, reads the tasks provision handed off, and reloads the
// identity on SIGHUP, which renew.post_hook sends through `systemctl
// reload`. Every event is one JSON line on stdout, for the journal, where
// the test reads what the agent could and could not do.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

func main() {
	pki := flag.String("pki", "/var/lib/provision/pki", "pki_dir")
	tasks := flag.String("tasks", "/var/lib/provision/tasks", "the hand-off directory")
	url := flag.String("url", "", "the tasks/wait URL")
	every := flag.Duration("every", 2*time.Second, "time between polls")
	flag.Parse()
	a := &agent{pki: *pki, tasks: *tasks, url: *url, seen: map[string]bool{}}
	a.load("start")
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	tick := time.NewTicker(*every)
	for {
		select {
		case <-hup:
			a.load("reload")
		case <-tick.C:
			a.poll()
			a.readTasks()
		}
	}
}

type agent struct {
	pki, tasks, url string
	mu              sync.Mutex
	client          *http.Client
	serial          string
	seen            map[string]bool
}

// log writes one event.
func log(event string, kv ...any) {
	m := map[string]any{"event": event}
	for i := 0; i+1 < len(kv); i += 2 {
		m[fmt.Sprint(kv[i])] = kv[i+1]
	}
	b, _ := json.Marshal(m)
	fmt.Println(string(b))
}

// load reads key, certificate and roots; on failure the old identity stays.
func (a *agent) load(why string) {
	gen := filepath.Join(a.pki, "current")
	cert, err := tls.LoadX509KeyPair(filepath.Join(gen, "cert.pem"), filepath.Join(gen, "key.pem"))
	if err != nil {
		log(why, "error", err.Error(), "uid", os.Getuid())
		return
	}
	pem, err := os.ReadFile(filepath.Join(a.pki, "ca.pem"))
	if err != nil {
		log(why, "error", err.Error(), "uid", os.Getuid())
		return
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	a.mu.Lock()
	a.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12},
	}}
	a.serial = leaf.SerialNumber.String()
	a.mu.Unlock()
	groups, _ := os.Getgroups()
	log(why, "serial", a.serial, "uid", os.Getuid(), "groups", groups)
}

// poll is one tasks/wait with the identity held.
func (a *agent) poll() {
	a.mu.Lock()
	c, serial := a.client, a.serial
	a.mu.Unlock()
	if c == nil {
		a.load("start") // bootstrap may not have run yet
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.url, nil)
	resp, err := c.Do(req)
	if err != nil {
		log("poll", "serial", serial, "error", err.Error())
		return
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	log("poll", "serial", serial, "status", resp.StatusCode, "bytes", len(body))
}

// readTasks reads every task file provision handed off that it has not
// read yet.
func (a *agent) readTasks() {
	ents, err := os.ReadDir(a.tasks)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log("tasks", "error", err.Error())
		}
		return
	}
	for _, e := range ents {
		if a.seen[e.Name()] || e.Name()[0] == '.' {
			continue
		}
		a.seen[e.Name()] = true
		b, err := os.ReadFile(filepath.Join(a.tasks, e.Name()))
		if err != nil {
			log("task", "file", e.Name(), "error", err.Error())
			continue
		}
		log("task", "file", e.Name(), "bytes", len(b))
	}
}
