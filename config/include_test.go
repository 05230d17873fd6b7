package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
}

func resText(name string) string {
	return "resource " + name + " { on a { node-id 0; address h:1; disk /d; meta-disk internal; } }\n"
}

func TestIncludeGlob(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"twinbd.conf": "common { net { protocol A; } }\ninclude \"twinbd.d/*.res\";\n" + resText("last"),
		// sorted order, not creation order
		"twinbd.d/b.res":      resText("rb"),
		"twinbd.d/a.res":      resText("ra") + resText("ra2"),
		"twinbd.d/c.res.orig": resText("ignored"),
		"twinbd.d/sub/d.res":  resText("nested-not-matched"),
	})
	cfg, err := Load(filepath.Join(dir, "twinbd.conf"))
	require.NoError(t, err)
	var names []string
	for _, r := range cfg.Resources {
		names = append(names, r.Name)
		require.Equal(t, "A", r.Net.Protocol, "common applies to included resources")
	}
	require.Equal(t, []string{"ra", "ra2", "rb", "last"}, names)
	require.Equal(t, filepath.Join(dir, "twinbd.d/a.res"), cfg.Resources[0].Pos.File)
	require.Equal(t, Pos{filepath.Join(dir, "twinbd.d/a.res"), 2, 1}, cfg.Resources[1].Pos)
}

func TestIncludeRelativeToIncludingFile(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"etc/twinbd.conf":     `include "conf.d/*.conf";`,
		"etc/conf.d/x.conf":   `include "../res/r0.res";`, // relative to conf.d/, not to etc/
		"etc/res/r0.res":      resText("r0"),
		"etc/conf.d/r0.res":   resText("wrong"),
		"etc/conf.d/abs.conf": "include \"" + filepath.Join(dir, "etc/res/*.abs") + "\";",
		"etc/res/r1.abs":      resText("r1"),
	})
	cfg, err := Load(filepath.Join(dir, "etc/twinbd.conf"))
	require.NoError(t, err)
	require.Len(t, cfg.Resources, 2)
	require.Equal(t, "r1", cfg.Resources[0].Name) // abs.conf sorts before x.conf
	require.Equal(t, "r0", cfg.Resources[1].Name)

	// Parse resolves relative to the directory of the name it is given.
	cfg, err = Parse(filepath.Join(dir, "etc/conf.d/virtual.conf"), []byte(`include "../res/r0.res";`))
	require.NoError(t, err)
	require.Equal(t, "r0", cfg.Resources[0].Name)
}

func TestIncludeErrors(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"empty.conf":   `include "nothing/*.res";`,
		"missing.conf": "\n  include \"nothing.res\";",
		"self.conf":    `include "self.conf";`,
		"a.conf":       "include \"b.conf\";",
		"b.conf":       "# b\ninclude \"*.cyc\";",
		"c.cyc":        "include \"a.conf\";",
		"bad.conf":     `include "x[";`,
		"dir.conf":     `include "sub";`,
		"sub/x":        "",
		"broken.conf":  `include "broken.res";`,
		"broken.res":   "resource r0 {\n  net { protocol Q; }\n}",
		"dup.conf":     "include \"r.res\";\ninclude \"r.res\";",
		"r.res":        resText("r0"),
	})
	cfg, err := Load(filepath.Join(dir, "empty.conf"))
	require.NoError(t, err, "a wildcard that matches nothing is fine")
	require.Empty(t, cfg.Resources)

	p := func(name string) string { return filepath.Join(dir, name) }
	for _, tc := range []struct {
		file string
		want string
	}{
		{"missing.conf", p("missing.conf") + `:2:11: include "nothing.res": no such file (looked for ` + p("nothing.res") + ")"},
		{"self.conf", p("self.conf") + `:1:9: include cycle: ` + p("self.conf") + " includes " + p("self.conf")},
		{"a.conf", p("c.cyc") + `:1:9: include cycle: ` + p("c.cyc") + " includes " + p("a.conf") +
			", which is already being read (chain: " + p("a.conf") + " -> " + p("b.conf") + " -> " + p("c.cyc") + " -> " + p("a.conf") + ")"},
		{"bad.conf", p("bad.conf") + `:1:9: invalid include pattern "x["`},
		{"dir.conf", p("dir.conf") + `:1:9: include "sub": read ` + p("sub") + ": is a directory"},
		{"broken.conf", p("broken.res") + `:2:18: invalid protocol "Q"`},
		{"dup.conf", p("r.res") + `:1:10: duplicate resource "r0" (first defined at ` + p("r.res") + ":1:10)"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Load(p(tc.file))
			require.Error(t, err)
			var cerr *Error
			require.ErrorAs(t, err, &cerr)
			require.True(t, strings.HasPrefix(err.Error(), tc.want), "got  %s\nwant %s", err, tc.want)
		})
	}
	_, err = Load(p("missing.conf"))
	require.True(t, errors.Is(err, fs.ErrNotExist))
}

func TestIncludeDepthLimit(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	for i := range 40 {
		files[filepath.Join("d", strings.Repeat("x", i+1)+".conf")] = "include \"" + strings.Repeat("x", i+2) + ".conf\";"
	}
	writeFiles(t, dir, files)
	_, err := Load(filepath.Join(dir, "d", "x.conf"))
	require.ErrorContains(t, err, "includes nested too deeply")
}
