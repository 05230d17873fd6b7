package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// host0 and host1 are valid on sections for error tests that need a resource.
const (
	host0 = "on a { node-id 0; address 10.0.0.1:7788; disk /d; meta-disk internal; }"
	host1 = "on b { node-id 1; address 10.0.0.2:7788; disk /d; meta-disk internal; }"
)

func res(body string) string { return "resource r0 {\n" + body + "\n" + host0 + "\n" + host1 + "\n}\n" }

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want string // the whole Error() text when it starts with "e.res:", else a substring
	}{
		// lexical
		{"unterminated string", `resource "r0 {`, `e.res:1:10: unterminated string (expected a closing " on the same line)`},
		{"string across lines", "resource r0 { net { shared-secret \"a\nb\"; } }", `e.res:1:35: unterminated string`},
		{"bad escape", `resource r0 { net { shared-secret "a\nb"; } }`, `e.res:1:37: invalid escape "\n" in string (expected \" or \\)`},
		{"control char", "resource r0\x01 {}", `e.res:1:12: unexpected character '\x01'`},
		{"invalid utf8", "resource r\xff {}", `e.res:1:11: invalid UTF-8 byte 0xff`},
		{"control in string", "resource r0 { net { shared-secret \"a\x00\"; } }", `e.res:1:37: control character U+0000 in string`},
		// syntax
		{"missing semicolon", "resource r0 {\n  on a { node-id 0 }\n}", `e.res:2:20: expected ";" after value of "node-id", found "}"`},
		{"missing semicolon at eof", "resource r0 { net { protocol C", `e.res:1:31: expected ";" after value of "protocol", found end of file`},
		{"keyword then brace", "resource r0 { net { protocol }", `e.res:1:30: expected a value, ";" or "{" after "protocol", found "}"`},
		{"unclosed section", "resource r0 {\n  net {\n", `e.res:3:1: expected "}" to close net section opened at 2:3, found end of file`},
		{"unclosed resource", "resource r0 {\n", `e.res:2:1: expected "}" to close "resource r0" section opened at 1:1, found end of file`},
		{"stray close", "}", `e.res:1:1: unexpected "}" (no section is open; expected a keyword)`},
		{"stray semicolon", "resource r0 { ; }", `e.res:1:15: expected a keyword, found ";"`},
		{"string keyword", `"resource" r0 {}`, `e.res:1:1: expected a keyword (include, common or resource), found string "resource"`},
		{"too deep", strings.Repeat("a {", 20), `sections nested too deeply`},
		// top level
		{"unknown top level", "resourse r0 {}", `e.res:1:1: unknown top-level keyword "resourse" (expected one of: include, common, resource)`},
		{"global", "global { usage-count no; frobnicate no; }", `e.res:1:26: unknown key "frobnicate" in global section (twinbd has no global section`},
		{"resource without name", "resource { }", `e.res:1:10: expected a name after "resource", found "{"`},
		{"resource two names", "resource r0 r1 { }", `e.res:1:13: expected "{" after "resource r0", found "r1"`},
		{"resource no block", "resource r0;", `e.res:1:12: expected "{" after "resource r0", found ";"`},
		{"bad resource name", "resource -x { }", `e.res:1:10: invalid resource name "-x"`},
		{"resource all", "resource all { " + host0 + " }", `e.res:1:10: invalid resource name "all"`},
		{"duplicate resource", res("") + "resource r0 { " + host0 + " }", `e.res:6:10: duplicate resource "r0" (first defined at e.res:1:10)`},
		{"duplicate common", "common {}\ncommon {}", `e.res:2:1: duplicate common section (first at e.res:1:1)`},
		{"common with name", "common x {}", `e.res:1:8: expected "{" after "common", found "x"`},
		{"unknown section in common", "common { on a { } }", `e.res:1:10: unknown section "on" in common section (expected one of: net, disk, handlers, options)`},
		{"include with block", "include x { }", `e.res:1:11: expected ";" after include pattern, found "{"`},
		{"include no arg", "include;", `e.res:1:8: expected a file name or pattern after "include", found ";"`},
		{"include two args", "include a b;", `e.res:1:11: expected ";" after value of "include", found "b"`},
		{"include inside resource", "resource r0 { include \"x\"; }", `e.res:1:15: include is only allowed at top level, not inside resource r0`},
		// sections and keys
		{"unknown key", res("net { protocl C; }"), `e.res:2:7: unknown key "protocl" in net section (expected one of: protocol, shared-secret, cram-hmac-alg, fencing, after-sb-0pri, `},
		{"unknown resource key", res("floating 10.0.0.1:7788;"), `e.res:2:1: unknown key "floating" in resource r0 (expected one of: net, disk, handlers, options, promoter, nbd, on, witness, export)`},
		{"duplicate key", res("net { protocol C;\nprotocol A; }"), `e.res:3:1: duplicate key "protocol" in net section (first at e.res:2:7)`},
		{"duplicate section", res("net { }\nnet { }"), `e.res:3:1: duplicate net section (first at e.res:2:1)`},
		{"section as key", res("net C;"), `e.res:2:5: expected "{" after "net", found "C"`},
		{"key as section", res("net { protocol { } }"), `e.res:2:16: expected a value after "protocol", found "{"`},
		{"value then block", res("net { protocol C { } }"), `e.res:2:18: expected ";" after value of "protocol", found "{"`},
		{"two values", res("net { protocol C A; }"), `e.res:2:18: expected ";" after value of "protocol", found "A"`},
		{"bad protocol", res("net { protocol D; }"), `e.res:2:16: invalid protocol "D" (expected A, B or C)`},
		{"bad fencing", res("net { fencing stonith; }"), `invalid fencing "stonith" (expected dont-care, resource-only or resource-and-stonith)`},
		{"bad after-sb-0pri", res("net { after-sb-0pri consensus; }"), `invalid after-sb-0pri "consensus"`},
		{"bad after-sb-1pri", res("net { after-sb-1pri discard-zero-changes; }"), `invalid after-sb-1pri "discard-zero-changes"`},
		{"bad after-sb-2pri", res("net { after-sb-2pri discard-secondary; }"), `invalid after-sb-2pri "discard-secondary"`},
		{"discard unknown node", res("net { after-sb-0pri discard-node-zed; }"), `e.res:2:21: invalid after-sb-0pri "discard-node-zed" in resource r0: no "on zed" section (expected discard-node- followed by one of: a, b)`},
		{"bad cram", res("net { cram-hmac-alg md5; }"), `invalid cram-hmac-alg "md5" (expected sha1, sha256 or sha512)`},
		{"bad verify-alg", res("net { verify-alg sha512; }"), `invalid verify-alg "sha512" (expected xxhash64, sha256, crc32c, sha1 or md5)`},
		{"bad yes", res("net { tls true; }"), `e.res:2:11: invalid tls "true" (expected yes or no)`},
		{"tls without cert", res("net { tls yes; }"), `e.res:2:11: tls yes in resource r0 needs tls-cert, tls-key and tls-ca (the CA that signed the peer's certificate) in its net section`},
		{"relative tls path", res("net { tls-ca ca.crt; }"), `invalid tls-ca "ca.crt" (expected an absolute path)`},
		{"ping-int zero", res("net { ping-int 0; }"), `e.res:2:16: invalid ping-int "0" (expected a whole number of seconds between 1 and 120)`},
		{"ping-int suffix", res("net { ping-int 1s; }"), `invalid ping-int "1s"`},
		{"timeout negative", res("net { timeout -1; }"), `invalid timeout "-1" (expected a whole number of tenths of a second between 1 and 600)`},
		{"ko-count big", res("net { ko-count 201; }"), `invalid ko-count "201" (expected a whole number between 0 and 200)`},
		{"ko-count huge", res("net { ko-count 99999999999999999999999; }"), `invalid ko-count "99999999999999999999999"`},
		{"size suffix", res("disk { size 10T; }"), `e.res:2:13: invalid size "10T" (expected a whole number of 512-byte sectors or a number with a K, M or G suffix, between 0 and 1073741824G)`},
		{"size KiB", res("disk { size 10KiB; }"), `invalid size "10KiB"`},
		{"size only suffix", res("disk { size G; }"), `invalid size "G"`},
		{"size overflow", res("disk { size 9999999999999G; }"), `invalid size "9999999999999G"`},
		{"rate plain unit", res("disk { resync-rate 1.5M; }"), `invalid resync-rate "1.5M" (expected a whole number of KiB or a number`},
		{"granularity power", res("disk { bitmap-granularity 12K; }"), `e.res:2:27: invalid bitmap-granularity "12K" (expected a power of two between 4K and 1M)`},
		{"granularity small", res("disk { bitmap-granularity 512; }"), `invalid bitmap-granularity "512" (expected a whole number of bytes or a number with a K, M or G suffix, between 4K and 1M)`},
		{"bad on-io-error", res("disk { on-io-error panic; }"), `invalid on-io-error "panic" (expected detach, pass_on or call-local-io-error)`},
		{"bad quorum", res("options { quorum 2; }"), `invalid quorum "2" (expected off or majority)`},
		{"unknown handler", res("handlers { fence \"x\"; }"), `unknown key "fence" in handlers section (expected one of: fence-peer, `},
		{"unknown options key", res("options { auto-promot yes; }"), `unknown key "auto-promot" in options section`},
		{"bad witness", res("witness 10.0.0.3;"), `e.res:2:9: invalid witness "10.0.0.3" (expected IP:PORT or [IPv6]:PORT)`},
		{"duplicate witness", res("witness h:1;\nwitness h:2;"), `e.res:3:1: duplicate key "witness" in resource r0 (first at e.res:2:1)`},
		{"bad export port", res("export h:http;"), `e.res:2:8: invalid port "http" in export "h:http" (expected a number between 1 and 65535)`},
		{"export port zero", res("export h:0;"), `invalid port "0" in export "h:0"`},
		{"export port big", res("export h:65536;"), `invalid port "65536"`},
		{"export bad host", res("export \"a b:1\";"), `invalid host "a b" in export "a b:1" (expected an IP address or a host name)`},
		// hosts
		{"no hosts", "resource r0 { net { } }", `e.res:1:1: resource r0 has no "on" section (expected one or two: `},
		{"three hosts", res("on c { node-id 2; address 10.0.0.3:7788; disk /d; meta-disk internal; }"), `e.res:4:1: third "on" section (b): twinbd supports two nodes per resource`},
		{"on without name", "resource r0 { on { } }", `e.res:1:18: expected a name after "on", found "{"`},
		{"on two names", "resource r0 { on a b { } }", `e.res:1:20: expected "{" after "on a", found "b"`},
		{"duplicate on", "resource r0 {\n" + host0 + "\n" + host0 + "\n}", `e.res:3:4: duplicate "on a" section (first at e.res:2:4)`},
		{"duplicate node-id", "resource r0 {\n" + host0 + "\non b { node-id 0; address 10.0.0.2:7788; disk /d; meta-disk internal; }\n}",
			`e.res:3:1: duplicate node-id 0 in "on b" (already used by "on a" at e.res:2:1)`},
		{"duplicate address", "resource r0 {\n" + host0 + "\non b { node-id 1; address 10.0.0.1:7788; disk /d; meta-disk internal; }\n}",
			`e.res:3:1: duplicate address 10.0.0.1:7788 in "on b"`},
		{"missing node-id", "resource r0 {\non a { address h:1; disk /d; meta-disk internal; }\n}", `e.res:2:1: missing node-id in "on a" section (required: node-id, address, disk, meta-disk)`},
		{"missing address", "resource r0 { on a { node-id 0; disk /d; meta-disk internal; } }", `missing address in "on a" section`},
		{"missing disk", "resource r0 { on a { node-id 0; address h:1; meta-disk internal; } }", `missing disk in "on a" section`},
		{"missing meta-disk", "resource r0 { on a { node-id 0; address h:1; disk /d; } }", `missing meta-disk in "on a" section`},
		{"node-id range", "resource r0 { on a { node-id 32; address h:1; disk /d; meta-disk internal; } }", `e.res:1:30: invalid node-id "32" (expected a whole number between 0 and 31)`},
		{"unknown host key", "resource r0 { on a { node-id 0; adress h:1; } }", `e.res:1:33: unknown key "adress" in "on a" section (expected one of: node-id, address, disk, meta-disk, export, device)`},
		{"duplicate host key", "resource r0 { on a { node-id 0; node-id 1; } }", `e.res:1:33: duplicate key "node-id" in "on a" section (first at e.res:1:22)`},
		{"bad address", "resource r0 { on a { node-id 0; address 10.0.0.1; disk /d; meta-disk internal; } }", `e.res:1:41: invalid address "10.0.0.1" (expected IP:PORT or [IPv6]:PORT)`},
		{"v6 without brackets", "resource r0 { on a { node-id 0; address fd00::1:7788; disk /d; meta-disk internal; } }", `invalid address "fd00::1:7788"`},
		{"address family bogus", "resource r0 { on a { node-id 0; address sdp 1.1.1.1:1; disk /d; meta-disk internal; } }", `expected ";" after value of "address", found "1.1.1.1:1"`},
		{"bad meta-disk", "resource r0 { on a { node-id 0; address h:1; disk /d; meta-disk flexible; } }", `invalid meta-disk "flexible" (expected internal or an absolute path)`},
		{"bad device", "resource r0 { on a { node-id 0; address h:1; disk /d; meta-disk internal; device /dev/sda; } }", `invalid device "/dev/sda" (expected /dev/nbdN)`},
		{"empty disk", "resource r0 { on a { node-id 0; address h:1; disk \"\"; meta-disk internal; } }", `empty disk`},
		{"bad host name", "resource r0 { on \"a b\" { } }", `invalid host name "a b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("e.res", []byte(tc.src))
			require.Error(t, err)
			var cerr *Error
			require.True(t, errors.As(err, &cerr), "want *Error, got %T: %v", err, err)
			if strings.HasPrefix(tc.want, "e.res:") {
				require.True(t, strings.HasPrefix(err.Error(), tc.want), "got  %s\nwant %s", err, tc.want)
			} else {
				require.Contains(t, err.Error(), tc.want)
			}
		})
	}
}

func TestErrorFields(t *testing.T) {
	_, err := Parse("dir/e.res", []byte("resource r0 {\n  net { protocol D; }\n}"))
	var cerr *Error
	require.ErrorAs(t, err, &cerr)
	require.Equal(t, &Error{File: "dir/e.res", Line: 2, Col: 18, Msg: `invalid protocol "D" (expected A, B or C)`}, cerr)
	require.Equal(t, `dir/e.res:2:18: invalid protocol "D" (expected A, B or C)`, err.Error())
}

func TestColumnsCountRunes(t *testing.T) {
	_, err := Parse("e.res", []byte("# ünïcödé\nresource r0 { net { shared-secret \"ü\"; protocol X; } }"))
	require.EqualError(t, err, `e.res:2:49: invalid protocol "X" (expected A, B or C)`)
	_, err = Parse("e.res", []byte("resource r0 {\tnet { protocol X; } }"))
	require.EqualError(t, err, `e.res:1:30: invalid protocol "X" (expected A, B or C)`)
}
