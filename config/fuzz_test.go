package config

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzParse checks that no input panics the parser and that whatever parses comes
// back unchanged through Format. Includes are disabled so random input never reads
// the host's files.
func FuzzParse(f *testing.F) {
	for _, s := range []string{designExample, classicExample, fullExample, "",
		"common { net { protocol A; } }\n" + resText("r"),
		"include \"x/*.res\";\n" + resText("r"),
		res("net { protocol D; }"),
		"resource r { on a { node-id 0; address [::1]:1; disk \"a\\\"b\"; meta-disk internal; } }",
		"resource r { disk { size 1G; resync-rate 100; c-fill-target 1; } on a { node-id 0; address h:1; disk d; meta-disk internal; } }",
		promoterExample,
		res(`promoter { start "ocf:h:a i x='a b' y=\\\"q\\\" z=a\\'b"; start up stop down; }`),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := parse("fuzz.res", src, noIncludeFS{})
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error is %T, not *Error: %v", err, err)
			}
			return
		}
		for _, r := range cfg.Resources {
			text := r.Format()
			cfg2, err := parse("formatted.res", []byte(text), noIncludeFS{})
			require.NoError(t, err, "re-parsing Format output:\n%s", text)
			require.Len(t, cfg2.Resources, 1)
			require.Equal(t, withoutPos(r), withoutPos(cfg2.Resources[0]), "Format output:\n%s", text)
		}
	})
}

// FuzzValue puts arbitrary text, quoted, in every value position and checks that an
// accepted value survives Format and re-Parse (quoting, escapes, suffixes, units).
func FuzzValue(f *testing.F) {
	for _, s := range []string{"C", "10M", "1", "0", "yes", "a\"b\\c", "#;{}", "h:1", "[::1]:7788", "/dev/nbd3", "50K", "3g"} {
		f.Add(s)
	}
	keys := [][2]string{}
	for _, sec := range sections {
		for _, k := range sec.keys {
			keys = append(keys, [2]string{sec.name, k.name})
		}
	}
	f.Fuzz(func(t *testing.T, v string) {
		q := quote(v)
		srcs := []string{
			"resource r { witness " + q + "; export " + q + "; " + host0 + " }",
			"resource r { on a { node-id 0; address " + q + "; disk " + q + "; meta-disk " + q + "; export " + q + "; device " + q + "; } }",
			"resource r { promoter { start " + q + "; start " + q + " stop " + q + "; on-stop-failure " + q + "; } " + host0 + " }",
			"resource r { promoter { start-timeout " + q + "; stop-timeout " + q + "; attach-device " + q + "; } " + host0 + " }",
			"resource r { promoter { start \"ocf:h:a i p=\"" + q[1:] + "; } " + host0 + " }",
		}
		for _, k := range keys {
			srcs = append(srcs, "resource r { "+k[0]+" { "+k[1]+" "+q+"; } "+host0+" }")
		}
		for _, src := range srcs {
			cfg, err := parse("v.res", []byte(src), noIncludeFS{})
			if err != nil {
				if _, ok := err.(*Error); !ok {
					t.Fatalf("error is %T, not *Error: %v", err, err)
				}
				continue
			}
			r := cfg.Resources[0]
			text := r.Format()
			cfg2, err := parse("formatted.res", []byte(text), noIncludeFS{})
			require.NoError(t, err, "re-parsing Format output:\n%s", text)
			require.Equal(t, withoutPos(r), withoutPos(cfg2.Resources[0]), "Format output:\n%s", text)
		}
	})
}
