package fleet

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", for counting step-ca's rows
	"github.com/smallstep/certificates/db"
)

// Postgres is a throwaway PostgreSQL server on 127.0.0.1, started with
// Debian's initdb and pg_ctl in a temporary directory, for step-ca's
// PostgreSQL backend. As root it runs as the "postgres" user (initdb
// refuses root).
type Postgres struct {
	Dir     string
	Addr    string
	Version string
	bin     string
	cred    *syscall.Credential
}

// FindPostgres returns the directory holding initdb and pg_ctl, or an error
// saying what to install.
func FindPostgres() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(r), nil
		}
		return filepath.Dir(p), nil
	}
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(m) > 0 {
		return filepath.Dir(m[len(m)-1]), nil
	}
	return "", errors.New("PostgreSQL is not installed (Debian package postgresql): no pg_ctl on PATH or under /usr/lib/postgresql")
}

// StartPostgres initialises a cluster in dir and starts it on a free
// loopback port, trusting local connections (loopback only), with
// maxConns connections allowed. step-ca opens one database connection per
// concurrent request (its PostgreSQL driver does not bound the pool), so
// a boot storm needs max_connections above the CA's peak concurrency.
func StartPostgres(dir string, maxConns int) (*Postgres, error) {
	bin, err := FindPostgres()
	if err != nil {
		return nil, err
	}
	p := &Postgres{Dir: dir, bin: bin}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running PostgreSQL as root is refused and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		// The postgres user must reach dir: open the parents for traversal
		// only where they are ours and temporary.
		for d := dir; d != "/" && strings.HasPrefix(d, os.TempDir()); d = filepath.Dir(d) {
			if d == dir {
				os.Chown(d, uid, gid)
			} else if st, err := os.Stat(d); err == nil && st.Mode().Perm()&0o001 == 0 {
				os.Chmod(d, st.Mode().Perm()|0o011)
			}
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := p.cmd("initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	p.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s -c max_connections=%d -c fsync=on", port, dir, maxConns)
	if out, err := p.cmd("pg_ctl", "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts, "-w", "-t", "30", "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		return nil, fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	if out, err := p.cmd("postgres", "--version").Output(); err == nil {
		p.Version = strings.TrimSpace(string(out))
	}
	return p, nil
}

func (p *Postgres) cmd(name string, args ...string) *exec.Cmd {
	c := exec.Command(filepath.Join(p.bin, name), args...)
	c.Dir = p.Dir
	c.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	if p.cred != nil {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return c
}

// Config is step-ca's database configuration for this server.
func (p *Postgres) Config() *db.Config {
	return &db.Config{Type: "postgresql", DataSource: p.dsn("stepca")}
}

func (p *Postgres) dsn(database string) string {
	return "postgresql://postgres@" + p.Addr + "/" + database + "?sslmode=disable"
}

// Count returns the number of rows of step-ca's table (x509_certs: the
// certificates it issued; used_ott: the tokens it has seen).
func (p *Postgres) Count(table string) (int, error) {
	d, err := sql.Open("pgx", p.dsn("stepca"))
	if err != nil {
		return 0, err
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	err = d.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n)
	return n, err
}

// LogCount counts the lines of the server's log that contain s, for
// example "too many clients already".
func (p *Postgres) LogCount(s string) int {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "log"))
	return strings.Count(string(b), s)
}

// Stop stops the server.
func (p *Postgres) Stop() error {
	out, err := p.cmd("pg_ctl", "-D", filepath.Join(p.Dir, "data"), "-m", "fast", "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

// Pid is the postmaster's process ID (the first line of postmaster.pid),
// so that a storm can count its CPU with that of its backends.
func (p *Postgres) Pid() (int, error) {
	b, err := os.ReadFile(filepath.Join(p.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid < 1 {
		return 0, fmt.Errorf("postmaster.pid: first line %q is not a process ID", line)
	}
	return pid, nil
}
