package system

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// The account databases, /etc/group and /etc/passwd under Root, are read
// as a stream, one field at a time: a group with half a million members is
// one line of megabytes, and reading the file whole within a bound (as
// provision once did, 4 MiB) made renew and status fail on such a host,
// with advice to create a group that existed. Only the first three fields
// of a line are kept (name, password, id), each at most maxField bytes;
// the rest of a line is skipped without being held. A bound remains only
// on the whole file, far above any real one.

// MaxAccountDB bounds how much of /etc/group or /etc/passwd is read.
const MaxAccountDB = 256 << 20

// maxField bounds a name or id field; a longer one is no name provision
// looks up, and its line is skipped.
const maxField = 4096

// ErrGroupTooLarge says /etc/group is larger than MaxAccountDB, so a group
// could not be looked up (which says nothing about whether it exists).
var ErrGroupTooLarge = errors.New("group too large to read")

// LookupGroup resolves a group name (or a numeric gid) the way the node
// does: in the root's /etc/group, streamed.
func (h *Host) LookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	f, found, err := h.lookupAccount("/etc/group", func(f [3]string) bool { return f[0] == name })
	switch {
	case errors.Is(err, errTooLarge):
		return -1, fmt.Errorf("/etc/group is larger than %d bytes: %w", MaxAccountDB, ErrGroupTooLarge)
	case err != nil:
		return -1, fmt.Errorf("reading /etc/group: %w", err)
	case !found:
		return -1, fmt.Errorf("no group %q in /etc/group", name)
	}
	gid, err := strconv.Atoi(f[2])
	if err != nil || gid < 0 {
		return -1, fmt.Errorf("group %q in /etc/group has no numeric gid (%q)", name, f[2])
	}
	return gid, nil
}

// owner names uid for a message: "root", "uid 1001 (prometheus)", or
// "uid 1001" when the root's /etc/passwd does not name it.
func (h *Host) owner(uid uint32) string {
	if uid == 0 {
		return "root"
	}
	id := strconv.FormatUint(uint64(uid), 10)
	f, found, err := h.lookupAccount("/etc/passwd", func(f [3]string) bool { return f[2] == id })
	if err != nil || !found || f[0] == "" {
		return "uid " + id
	}
	return "uid " + id + " (" + f[0] + ")"
}

// group names gid for a message: "group 50 (staff)", or "group 50".
func (h *Host) group(gid uint32) string {
	id := strconv.FormatUint(uint64(gid), 10)
	f, found, err := h.lookupAccount("/etc/group", func(f [3]string) bool { return f[2] == id })
	if err != nil || !found || f[0] == "" {
		return "group " + id
	}
	return "group " + id + " (" + f[0] + ")"
}

var errTooLarge = errors.New("too large")

// lookupAccount streams the colon-separated file (a node path) and returns
// the first three fields of the first line match accepts.
func (h *Host) lookupAccount(file string, match func([3]string) bool) ([3]string, bool, error) {
	d, name, err := h.Chase(file, ChaseOptions{FollowLast: true})
	if err != nil {
		return [3]string{}, false, err
	}
	defer d.Close()
	f, err := d.OpenRegular(name, 0, 0)
	if err != nil {
		return [3]string{}, false, err
	}
	defer f.Close()
	s := &fieldScanner{r: bufio.NewReaderSize(io.LimitReader(f, MaxAccountDB+1), 64<<10)}
	for {
		fields, ok, err := s.line()
		if err != nil {
			return [3]string{}, false, err
		}
		if ok && match(fields) {
			return fields, true, nil
		}
		if s.eof {
			return [3]string{}, false, nil
		}
	}
}

// fieldScanner reads the first three fields of each line.
type fieldScanner struct {
	r    *bufio.Reader
	n    int64 // bytes read
	eof  bool
	buf  []byte
	done bool // the current line's newline was read
}

// line reads one line; ok is false when it has fewer than three fields or
// one too long.
func (s *fieldScanner) line() (f [3]string, ok bool, err error) {
	s.done = false
	for i := range f {
		if f[i], ok, err = s.field(); err != nil || !ok {
			return f, false, err
		}
		if s.done || s.eof {
			return f, i == len(f)-1, nil
		}
	}
	return f, true, s.skipLine()
}

// field reads up to the next ':' (consumed) or the end of the line; ok is
// false (and the line skipped) for a field longer than maxField.
func (s *fieldScanner) field() (string, bool, error) {
	s.buf = s.buf[:0]
	for {
		c, err := s.r.ReadByte()
		if err == io.EOF {
			s.eof = true
			return string(s.buf), true, nil
		}
		if err != nil {
			return "", false, err
		}
		if s.n++; s.n > MaxAccountDB {
			return "", false, errTooLarge
		}
		switch {
		case c == ':':
			return string(s.buf), true, nil
		case c == '\n':
			s.done = true
			return string(s.buf), true, nil
		case len(s.buf) == maxField:
			// No field provision looks up is this long: the line is
			// skipped, at the speed of a copy.
			return "", false, s.skipLine()
		}
		s.buf = append(s.buf, c)
	}
}

// skipLine discards the rest of the line without holding it.
func (s *fieldScanner) skipLine() error {
	for {
		chunk, err := s.r.ReadSlice('\n')
		if s.n += int64(len(chunk)); s.n > MaxAccountDB {
			return errTooLarge
		}
		switch {
		case err == nil:
			return nil
		case err == io.EOF:
			s.eof = true
			return nil
		case !errors.Is(err, bufio.ErrBufferFull):
			return err
		}
	}
}
