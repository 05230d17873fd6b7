package config

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

type tokenKind int

const (
	tEOF tokenKind = iota
	tWord
	tString
	tLBrace
	tRBrace
	tSemi
)

type token struct {
	kind tokenKind
	text string // word text or the unescaped string value
	pos  Pos
}

// describe renders a token for "found ..." in error messages.
func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of file"
	case tString:
		return "string " + strconv.Quote(t.text)
	case tLBrace:
		return `"{"`
	case tRBrace:
		return `"}"`
	case tSemi:
		return `";"`
	}
	return strconv.Quote(t.text)
}

func (t token) isValue() bool { return t.kind == tWord || t.kind == tString }

// isWordRune reports whether r may appear in a bare word. Everything that is not
// white space, a control character or one of the punctuation characters may.
func isWordRune(r rune) bool {
	switch r {
	case '{', '}', ';', '"', '#', ' ', '\t', '\r', '\n':
		return false
	}
	return r >= 0x20 && r != 0x7f && r != utf8.RuneError
}

type lexer struct {
	file string
	src  []byte
	off  int
	line int
	col  int
}

func newLexer(file string, src []byte) *lexer {
	return &lexer{file: file, src: src, line: 1, col: 1}
}

func (l *lexer) pos() Pos { return Pos{File: l.file, Line: l.line, Col: l.col} }

// peekRune returns the rune at the current offset and its width (0 at EOF). An
// invalid UTF-8 byte comes back as utf8.RuneError with width 1.
func (l *lexer) peekRune() (rune, int) {
	if l.off >= len(l.src) {
		return 0, 0
	}
	return utf8.DecodeRune(l.src[l.off:])
}

func (l *lexer) advance(r rune, w int) {
	l.off += w
	if r == '\n' {
		l.line++
		l.col = 1
	} else {
		l.col++
	}
}

func (l *lexer) next() (token, error) {
	for {
		r, w := l.peekRune()
		switch {
		case w == 0:
			return token{kind: tEOF, pos: l.pos()}, nil
		case r == ' ' || r == '\t' || r == '\r' || r == '\n':
			l.advance(r, w)
			continue
		case r == '#':
			for {
				r, w = l.peekRune()
				if w == 0 || r == '\n' {
					break
				}
				l.advance(r, w)
			}
			continue
		}
		p := l.pos()
		switch r {
		case '{':
			l.advance(r, w)
			return token{kind: tLBrace, text: "{", pos: p}, nil
		case '}':
			l.advance(r, w)
			return token{kind: tRBrace, text: "}", pos: p}, nil
		case ';':
			l.advance(r, w)
			return token{kind: tSemi, text: ";", pos: p}, nil
		case '"':
			return l.str(p)
		}
		if !isWordRune(r) {
			return token{}, l.badRune(p, r, w)
		}
		start := l.off
		for {
			r, w = l.peekRune()
			if w == 0 || !isWordRune(r) {
				break
			}
			l.advance(r, w)
		}
		if w != 0 && !strings.ContainsRune("{};\"# \t\r\n", r) {
			// A control character or invalid byte glued to a word.
			return token{}, l.badRune(l.pos(), r, w)
		}
		return token{kind: tWord, text: string(l.src[start:l.off]), pos: p}, nil
	}
}

func (l *lexer) badRune(p Pos, r rune, w int) *Error {
	if r == utf8.RuneError && w == 1 {
		return errorf(p, "invalid UTF-8 byte 0x%02x (expected a word, a string, \"{\", \"}\" or \";\")", l.src[l.off])
	}
	return errorf(p, "unexpected character %q (expected a word, a string, \"{\", \"}\" or \";\")", r)
}

// str lexes a double-quoted string. The only escapes are \" and \\; a string ends on
// its line.
func (l *lexer) str(p Pos) (token, error) {
	l.advance('"', 1)
	var b strings.Builder
	for {
		r, w := l.peekRune()
		switch {
		case w == 0 || r == '\n':
			return token{}, errorf(p, "unterminated string (expected a closing \" on the same line)")
		case r == '"':
			l.advance(r, w)
			return token{kind: tString, text: b.String(), pos: p}, nil
		case r == '\\':
			ep := l.pos()
			l.advance(r, w)
			r, w = l.peekRune()
			if w == 0 || r == '\n' {
				return token{}, errorf(p, "unterminated string (expected a closing \" on the same line)")
			}
			if r != '"' && r != '\\' {
				return token{}, errorf(ep, "invalid escape \"\\%c\" in string (expected \\\" or \\\\)", r)
			}
			l.advance(r, w)
			b.WriteRune(r)
		case r == utf8.RuneError && w == 1:
			return token{}, l.badRune(l.pos(), r, w)
		case r < 0x20 && r != '\t' || r == 0x7f:
			return token{}, errorf(l.pos(), "control character %s in string (expected printable text)", fmt.Sprintf("%U", r))
		default:
			l.advance(r, w)
			b.WriteRune(r)
		}
	}
}
