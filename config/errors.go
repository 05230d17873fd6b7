package config

import (
	"errors"
	"fmt"
)

// ErrNoResource is returned (wrapped) by [Config.Resource] when no resource has the
// requested name.
var ErrNoResource = errors.New("config: no such resource")

// ErrNoHost is returned (wrapped) by [Resource.Host] when no `on` section has the
// requested name.
var ErrNoHost = errors.New("config: no such host")

// Error is a syntax or validation error in a resource file. Every error Parse and
// Load report about the file's content is an *Error; match it with errors.As.
type Error struct {
	File      string
	Line, Col int    // 1-based; Col counts characters (runes), a tab counts as one
	Msg       string // what was found and what was expected
	Err       error  // underlying cause (for example an include that cannot be read), or nil
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Unwrap returns the underlying cause, so errors.Is(err, fs.ErrNotExist) works for an
// include that names a missing file.
func (e *Error) Unwrap() error { return e.Err }

// Pos is a position in a resource file.
type Pos struct {
	File      string
	Line, Col int
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col) }

func errorf(p Pos, format string, args ...any) *Error {
	return &Error{File: p.File, Line: p.Line, Col: p.Col, Msg: fmt.Sprintf(format, args...)}
}
