package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// stmt is one statement of the generic grammar:
//
//	keyword {value} ( ";" | "{" {stmt} "}" )
//
// The meaning of keywords is checked later, in build.go.
type stmt struct {
	key      token
	args     []token
	hasBlock bool
	block    []*stmt
	end      token // the ";" or "{" that ended the header
}

const (
	maxNesting     = 8        // resource > on > key needs 3; deeper is always an error
	maxIncludes    = 16       // include nesting depth
	maxFileSize    = 16 << 20 // a resource file is a few KiB; refuse to slurp /dev/zero
	includeKeyword = "include"
)

// fileSystem is what includes need. Tests and the fuzz target replace it.
type fileSystem interface {
	ReadFile(name string) ([]byte, error)
	Glob(pattern string) ([]string, error)
}

type osFS struct{}

func (osFS) ReadFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return nil, fmt.Errorf("read %s: is a directory", name)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("read %s: file larger than %d bytes", name, maxFileSize)
	}
	return b, nil
}

func (osFS) Glob(pattern string) ([]string, error) { return filepath.Glob(pattern) }

// noIncludeFS refuses every include; the fuzz target uses it so that random input
// never reads the host's files.
type noIncludeFS struct{}

var errIncludeDisabled = errors.New("includes are disabled")

func (noIncludeFS) ReadFile(string) ([]byte, error) { return nil, errIncludeDisabled }
func (noIncludeFS) Glob(string) ([]string, error)   { return nil, errIncludeDisabled }

type parser struct {
	lex   *lexer
	tok   token
	depth int
}

func (p *parser) advance() error {
	t, err := p.lex.next()
	if err != nil {
		return err
	}
	p.tok = t
	return nil
}

// parseFile parses one file into top-level statements, without following includes.
func parseFile(filename string, src []byte) ([]*stmt, error) {
	p := &parser{lex: newLexer(filename, src)}
	if err := p.advance(); err != nil {
		return nil, err
	}
	return p.stmts(nil)
}

// stmts parses statements until "}" (when open is not nil) or end of file.
func (p *parser) stmts(open *stmt) ([]*stmt, error) {
	var out []*stmt
	for {
		switch p.tok.kind {
		case tEOF:
			if open != nil {
				return nil, errorf(p.tok.pos, "expected \"}\" to close %s opened at %d:%d, found end of file",
					open.describe(), open.key.pos.Line, open.key.pos.Col)
			}
			return out, nil
		case tRBrace:
			if open == nil {
				return nil, errorf(p.tok.pos, "unexpected \"}\" (no section is open; expected a keyword)")
			}
			return out, p.advance()
		case tWord:
			s, err := p.stmt()
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		default:
			what := "a keyword"
			if open == nil {
				what = "a keyword (include, common or resource)"
			}
			return nil, errorf(p.tok.pos, "expected %s, found %s", what, p.tok.describe())
		}
	}
}

func (p *parser) stmt() (*stmt, error) {
	s := &stmt{key: p.tok}
	if err := p.advance(); err != nil {
		return nil, err
	}
	for p.tok.isValue() {
		s.args = append(s.args, p.tok)
		if err := p.advance(); err != nil {
			return nil, err
		}
	}
	s.end = p.tok
	switch p.tok.kind {
	case tSemi:
		return s, p.advance()
	case tLBrace:
		s.hasBlock = true
		if p.depth >= maxNesting {
			return nil, errorf(p.tok.pos, "sections nested too deeply (more than %d levels)", maxNesting)
		}
		if err := p.advance(); err != nil {
			return nil, err
		}
		p.depth++
		block, err := p.stmts(s)
		p.depth--
		if err != nil {
			return nil, err
		}
		s.block = block
		return s, nil
	}
	if len(s.args) > 0 {
		return nil, errorf(p.tok.pos, "expected \";\" after value of %q, found %s", s.key.text, p.tok.describe())
	}
	return nil, errorf(p.tok.pos, "expected a value, \";\" or \"{\" after %q, found %s", s.key.text, p.tok.describe())
}

// describe names a section for messages: `"on alpha" section`, `net section`.
func (s *stmt) describe() string {
	if len(s.args) > 0 {
		names := make([]string, len(s.args))
		for i, a := range s.args {
			names[i] = a.text
		}
		return fmt.Sprintf("%q section", s.key.text+" "+strings.Join(names, " "))
	}
	return s.key.text + " section"
}

// loader parses a file and splices the statements of its includes in place.
type loader struct {
	fs    fileSystem
	stack []string // absolute names of the files being parsed, outermost first
}

func (ld *loader) load(filename string, src []byte) ([]*stmt, error) {
	abs, err := filepath.Abs(filename)
	if err != nil {
		abs = filepath.Clean(filename)
	}
	ld.stack = append(ld.stack, abs)
	defer func() { ld.stack = ld.stack[:len(ld.stack)-1] }()

	top, err := parseFile(filename, src)
	if err != nil {
		return nil, err
	}
	var out []*stmt
	for _, s := range top {
		if s.key.text != includeKeyword {
			out = append(out, s)
			continue
		}
		inc, err := ld.include(filename, s)
		if err != nil {
			return nil, err
		}
		out = append(out, inc...)
	}
	return out, nil
}

func (ld *loader) include(filename string, s *stmt) ([]*stmt, error) {
	if s.hasBlock {
		return nil, errorf(s.end.pos, "expected \";\" after include pattern, found \"{\"")
	}
	if len(s.args) == 0 {
		return nil, errorf(s.end.pos, "expected a file name or pattern after \"include\", found %s", s.end.describe())
	}
	if len(s.args) > 1 {
		return nil, errorf(s.args[1].pos, "expected \";\" after value of \"include\", found %s", s.args[1].describe())
	}
	arg := s.args[0]
	if len(ld.stack) > maxIncludes {
		return nil, errorf(arg.pos, "includes nested too deeply (more than %d levels)", maxIncludes)
	}
	pattern := arg.text
	if pattern == "" {
		return nil, errorf(arg.pos, "empty include pattern (expected a file name or glob)")
	}
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(filepath.Dir(filename), pattern)
	}
	if _, err := filepath.Match(pattern, ""); err != nil {
		return nil, &Error{File: arg.pos.File, Line: arg.pos.Line, Col: arg.pos.Col,
			Msg: fmt.Sprintf("invalid include pattern %q: %v", arg.text, err), Err: err}
	}
	matches, err := ld.fs.Glob(pattern)
	if err != nil {
		return nil, &Error{File: arg.pos.File, Line: arg.pos.Line, Col: arg.pos.Col,
			Msg: fmt.Sprintf("include %q: %v", arg.text, err), Err: err}
	}
	if len(matches) == 0 {
		if strings.ContainsAny(arg.text, "*?[") {
			return nil, nil // an empty twinbd.d/ is fine, as with drbdadm
		}
		return nil, &Error{File: arg.pos.File, Line: arg.pos.Line, Col: arg.pos.Col,
			Msg: fmt.Sprintf("include %q: no such file (looked for %s)", arg.text, pattern), Err: fs.ErrNotExist}
	}
	sort.Strings(matches)
	var out []*stmt
	for _, m := range matches {
		abs, err := filepath.Abs(m)
		if err != nil {
			abs = filepath.Clean(m)
		}
		for _, open := range ld.stack {
			if open == abs {
				return nil, errorf(arg.pos, "include cycle: %s includes %s, which is already being read (chain: %s)",
					filename, m, strings.Join(append(append([]string{}, ld.stack...), abs), " -> "))
			}
		}
		src, err := ld.fs.ReadFile(m)
		if err != nil {
			return nil, &Error{File: arg.pos.File, Line: arg.pos.Line, Col: arg.pos.Col,
				Msg: fmt.Sprintf("include %q: %v", arg.text, err), Err: err}
		}
		inc, err := ld.load(m, src)
		if err != nil {
			return nil, err
		}
		out = append(out, inc...)
	}
	return out, nil
}
