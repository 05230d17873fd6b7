package config

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNBDSection(t *testing.T) {
	r := parseOne(t, res(`nbd {
    tls required; tls-cert /etc/twinbd/nbd.crt; tls-key /etc/twinbd/nbd.key; tls-ca /etc/twinbd/clients-ca.crt;
    allow 10.0.0.0/8; allow 127.0.0.1; allow "2001:db8::/32"; allow "::1";
}`))
	require.Equal(t, NBD{
		TLS: "required", TLSCert: "/etc/twinbd/nbd.crt", TLSKey: "/etc/twinbd/nbd.key", TLSCA: "/etc/twinbd/clients-ca.crt",
		Allow: []netip.Prefix{
			netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32"),
			netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("::1/128"),
		},
	}, r.NBD)
	requireRoundTrip(t, r)
	require.Contains(t, r.Format(), "    nbd {\n        tls required;\n")

	// Redacted copies the allow-list.
	red := r.Redacted()
	red.NBD.Allow[0] = netip.Prefix{}
	require.Equal(t, netip.MustParsePrefix("10.0.0.0/8"), r.NBD.Allow[0])

	// Without the section: no TLS, everyone, and nothing printed.
	r = parseOne(t, res(""))
	require.Equal(t, NBD{TLS: "no"}, r.NBD)
	require.NotContains(t, r.Format(), "nbd {")

	r = parseOne(t, res("nbd { tls yes; tls-cert /c; tls-key /k; }"))
	require.Equal(t, NBD{TLS: "yes", TLSCert: "/c", TLSKey: "/k"}, r.NBD)
	requireRoundTrip(t, r)
	r = parseOne(t, res("nbd { allow 192.168.1.0/24; }"))
	require.Equal(t, NBD{TLS: "no", Allow: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}}, r.NBD)
	requireRoundTrip(t, r)
}

func TestNBDSectionErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, want string
	}{
		{"unknown key", "nbd { tls-verify yes; }", `e.res:2:7: unknown key "tls-verify" in nbd section (expected one of: tls, tls-cert, tls-key, tls-ca, allow)`},
		{"bad tls", "nbd { tls maybe; }", `e.res:2:11: invalid tls "maybe" (expected no, yes or required)`},
		{"duplicate key", "nbd { tls no; tls yes; }", `e.res:2:15: duplicate key "tls" in nbd section (first at e.res:2:7)`},
		{"duplicate section", "nbd { }\nnbd { }", `e.res:3:1: duplicate nbd section (first at e.res:2:1)`},
		{"section with name", "nbd x { }", `e.res:2:5: expected "{" after "nbd", found "x"`},
		{"relative cert", "nbd { tls-cert nbd.crt; }", `e.res:2:16: invalid tls-cert "nbd.crt" (expected an absolute path)`},
		{"tls without cert", "nbd { tls required; tls-key /k; }", `e.res:2:11: tls required in the nbd section of resource r0 needs tls-cert and tls-key`},
		{"tls without key", "nbd { tls yes; tls-cert /c; }", `e.res:2:11: tls yes in the nbd section of resource r0 needs tls-cert and tls-key`},
		{"ca with offered tls", "nbd { tls yes; tls-cert /c; tls-key /k; tls-ca /ca; }", `e.res:2:41: tls-ca in the nbd section of resource r0 needs tls required`},
		{"ca without tls", "nbd { tls-ca /ca; }", `e.res:2:7: tls-ca in the nbd section of resource r0 needs tls required: with tls no`},
		{"bad allow", "nbd { allow everyone; }", `e.res:2:13: invalid allow "everyone" (expected an IP address or a CIDR prefix such as 10.0.0.0/8)`},
		{"allow host bits", "nbd { allow 10.1.2.3/8; }", `e.res:2:13: invalid allow "10.1.2.3/8" (host bits set: did you mean 10.0.0.0/8?)`},
		{"allow bad length", "nbd { allow 10.0.0.0/33; }", `e.res:2:13: invalid allow "10.0.0.0/33"`},
		{"allow duplicate", "nbd { allow 10.0.0.1; allow 10.0.0.1/32; }", `e.res:2:29: duplicate allow 10.0.0.1/32 in nbd section (first at e.res:2:13)`},
		{"allow no value", "nbd { allow; }", `e.res:2:12: expected a value after "allow", found ";"`},
		{"nbd in common", "", `unknown section "nbd" in common section`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := res(tc.body)
			if tc.name == "nbd in common" {
				src = "common { nbd { tls no; } }\n" + res("")
			}
			_, err := Parse("e.res", []byte(src))
			require.Error(t, err)
			require.True(t, strings.HasPrefix(err.Error(), tc.want) || (!strings.HasPrefix(tc.want, "e.res:") && strings.Contains(err.Error(), tc.want)),
				"got  %s\nwant %s", err, tc.want)
		})
	}
}
