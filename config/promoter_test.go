package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// promoterExample is the MariaDB example of docs/promoter.md.
const promoterExample = `resource mysql {
  promoter {
    start var-lib-mysql.mount;
    start mariadb.service;
    start "ocf:heartbeat:IPaddr2 ip_mysql ip=10.9.42.1 cidr_netmask=24";
    start "/usr/local/bin/db-up --fast" stop "/usr/local/bin/db-down";
    start-timeout 300; stop-timeout 120;
    on-stop-failure "echo b > /proc/sysrq-trigger";
    attach-device no;
  }
  on alpha { node-id 0; address 10.9.42.31:7788; disk /dev/vg/mysql; meta-disk internal; device /dev/nbd0; }
  on beta  { node-id 1; address 10.9.42.32:7788; disk /dev/vg/mysql; meta-disk internal; device /dev/nbd0; }
}
`

func TestParsePromoter(t *testing.T) {
	r := parseOne(t, promoterExample)
	require.Equal(t, &Promoter{
		Start: []Service{
			{Kind: ServiceSystemd, Unit: "var-lib-mysql.mount"},
			{Kind: ServiceSystemd, Unit: "mariadb.service"},
			{Kind: ServiceOCF, Provider: "heartbeat", Agent: "IPaddr2", Instance: "ip_mysql",
				Params: []OCFParam{{"ip", "10.9.42.1"}, {"cidr_netmask", "24"}}},
			{Kind: ServiceCommand, StartCommand: "/usr/local/bin/db-up --fast", StopCommand: "/usr/local/bin/db-down"},
		},
		StartTimeout: 300 * time.Second, StopTimeout: 120 * time.Second,
		OnStopFailure: "echo b > /proc/sysrq-trigger", AttachDevice: false,
	}, r.Promoter)
	require.Equal(t, []string{"var-lib-mysql.mount", "mariadb.service",
		"ocf:heartbeat:IPaddr2 ip_mysql ip=10.9.42.1 cidr_netmask=24", "/usr/local/bin/db-up --fast"},
		[]string{r.Promoter.Start[0].String(), r.Promoter.Start[1].String(), r.Promoter.Start[2].String(), r.Promoter.Start[3].String()})
	requireRoundTrip(t, r)
}

func TestPromoterDefaults(t *testing.T) {
	r := parseOne(t, designExample)
	require.Nil(t, r.Promoter, "no promoter section, no promoter")
	require.NotContains(t, r.Format(), "promoter")

	r = parseOne(t, res("promoter { }"))
	require.Equal(t, &Promoter{StartTimeout: 90 * time.Second, StopTimeout: 90 * time.Second, AttachDevice: true}, r.Promoter)
	require.Contains(t, r.Format(), `
    promoter {
        start-timeout 90;
        stop-timeout 90;
        attach-device yes;
    }
`)
	requireRoundTrip(t, r)
}

func TestPromoterEntries(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want Service
	}{
		{`start foo@bar.service;`, Service{Kind: ServiceSystemd, Unit: "foo@bar.service"}},
		{`start "dev-disk-by\\x2duuid-1.device";`, Service{Kind: ServiceSystemd, Unit: `dev-disk-by\x2duuid-1.device`}},
		{`start drbd-services.target;`, Service{Kind: ServiceSystemd, Unit: "drbd-services.target"}},
		{`start ocf:heartbeat:Dummy;`, Service{Kind: ServiceOCF, Provider: "heartbeat", Agent: "Dummy"}},
		{`start "ocf:linbit:drbd r0";`, Service{Kind: ServiceOCF, Provider: "linbit", Agent: "drbd", Instance: "r0"}},
		{`start "ocf:heartbeat:Filesystem device=/dev/nbd0 directory=/var/lib/mysql fstype=ext4";`,
			Service{Kind: ServiceOCF, Provider: "heartbeat", Agent: "Filesystem",
				Params: []OCFParam{{"device", "/dev/nbd0"}, {"directory", "/var/lib/mysql"}, {"fstype", "ext4"}}}},
		{`start "ocf:heartbeat:apache web  configfile='/etc/apache 2/httpd.conf' statusurl=\"http://x/?a=b\" empty= q=a\\'b";`,
			Service{Kind: ServiceOCF, Provider: "heartbeat", Agent: "apache", Instance: "web",
				Params: []OCFParam{{"configfile", "/etc/apache 2/httpd.conf"}, {"statusurl", "http://x/?a=b"}, {"empty", ""}, {"q", "a'b"}}}},
		{`start "ocf:x:y a=\"in \\\" dq\"";`, Service{Kind: ServiceOCF, Provider: "x", Agent: "y",
			Params: []OCFParam{{"a", `in " dq`}}}},
		{`start "exec /usr/local/bin/db-up" stop "/usr/local/bin/db-down";`,
			Service{Kind: ServiceCommand, StartCommand: "exec /usr/local/bin/db-up", StopCommand: "/usr/local/bin/db-down"}},
		{`start up.sh stop down.sh;`, Service{Kind: ServiceCommand, StartCommand: "up.sh", StopCommand: "down.sh"}},
		{`start "mount /dev/nbd0 /mnt" stop "umount /mnt";`, Service{Kind: ServiceCommand, StartCommand: "mount /dev/nbd0 /mnt", StopCommand: "umount /mnt"}},
	} {
		t.Run(tc.src, func(t *testing.T) {
			r := parseOne(t, res("promoter { "+tc.src+" }"))
			require.Equal(t, []Service{tc.want}, r.Promoter.Start)
			requireRoundTrip(t, r)
		})
	}
}

func TestPromoterErrors(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"unknown key", "promoter { stat a.service; }", `e.res:2:12: unknown key "stat" in promoter section (expected one of: start, start-timeout, stop-timeout, on-stop-failure, attach-device)`},
		{"duplicate section", "promoter { }\npromoter { }", `e.res:3:1: duplicate promoter section (first at e.res:2:1)`},
		{"named", "promoter x { }", `e.res:2:10: expected "{" after "promoter", found "x"`},
		{"no block", "promoter;", `e.res:2:9: expected "{" after "promoter", found ";"`},
		{"start without value", "promoter { start; }", `e.res:2:17: expected a value after "start", found ";" (expected a systemd unit such as mariadb.service`},
		{"start block", "promoter { start a.service { } }", `e.res:2:28: expected ";" after start value, found "{"`},
		{"unit without suffix", "promoter { start mariadb; }", `e.res:2:18: invalid start "mariadb" (expected a systemd unit such as mariadb.service, "ocf:PROVIDER:AGENT [INSTANCE] NAME=VALUE ...", or a command pair: start "COMMAND" stop "COMMAND";)`},
		{"unit like an option", "promoter { start -x.service; }", `e.res:2:18: invalid start "-x.service"`},
		{"unit without name", "promoter { start .mount; }", `e.res:2:18: invalid start ".mount"`},
		{"command without stop", `promoter { start "/usr/bin/up"; }`, `e.res:2:18: invalid start "/usr/bin/up"`},
		{"two values", "promoter { start a.service b.service; }", `e.res:2:28: expected ";" or stop "COMMAND" after start value, found "b.service"`},
		{"quoted stop", `promoter { start up "stop" down; }`, `e.res:2:21: expected ";" or stop "COMMAND" after start value, found string "stop"`},
		{"stop without command", "promoter { start up stop; }", `e.res:2:25: expected a stop command after "stop", found ";"`},
		{"stop two commands", "promoter { start up stop down now; }", `e.res:2:31: expected ";" after stop command, found "now" (quote a command that has spaces)`},
		{"unit with stop", "promoter { start a.service stop b; }", `e.res:2:28: unexpected stop after start "a.service": systemd units and OCF agents are stopped by twinbd`},
		{"ocf with stop", `promoter { start "ocf:a:b" stop b; }`, `unexpected stop after start "ocf:a:b"`},
		{"empty start command", `promoter { start " " stop b; }`, `e.res:2:18: empty start command`},
		{"empty stop command", `promoter { start a stop ""; }`, `e.res:2:25: empty stop command (expected the shell command that undoes "a")`},
		{"duplicate unit", "promoter { start a.service;\nstart a.service; }", `e.res:3:7: duplicate start "a.service" in promoter section (first at e.res:2:18`},
		{"duplicate ocf instance", `promoter { start "ocf:h:IPaddr2 ip=1"; start "ocf:h:IPaddr2 ip=2"; }`, `duplicate start "ocf:h:IPaddr2 ip=2" in promoter section (first at e.res:2:18; an OCF agent used twice needs two instance names)`},
		{"ocf two parts", `promoter { start "ocf:IPaddr2 ip=1"; }`, `e.res:2:18: invalid OCF agent "ocf:IPaddr2" (expected ocf:PROVIDER:AGENT such as ocf:heartbeat:IPaddr2`},
		{"ocf path in agent", `promoter { start "ocf:heartbeat:../../../bin/sh"; }`, `invalid OCF agent "ocf:heartbeat:../../../bin/sh"`},
		{"ocf bad instance", `promoter { start "ocf:h:a 'i j'"; }`, `invalid OCF instance name "i j"`},
		{"ocf bad param", `promoter { start "ocf:h:a inst ip=1 nonsense"; }`, `invalid OCF parameter "nonsense" in "ocf:h:a inst ip=1 nonsense"`},
		{"ocf bad param name", `promoter { start "ocf:h:a a-b=1"; }`, `invalid OCF parameter "a-b=1"`},
		{"ocf duplicate param", `promoter { start "ocf:h:a ip=1 ip=2"; }`, `duplicate OCF parameter "ip" in "ocf:h:a ip=1 ip=2"`},
		{"ocf unterminated", `promoter { start "ocf:h:a ip='1"; }`, `e.res:2:18: invalid OCF agent "ocf:h:a ip='1": unterminated ' quote`},
		{"start-timeout zero", "promoter { start-timeout 0; }", `e.res:2:26: invalid start-timeout "0" (expected a whole number of seconds between 1 and 86400)`},
		{"stop-timeout suffix", "promoter { stop-timeout 30s; }", `invalid stop-timeout "30s"`},
		{"duplicate timeout", "promoter { stop-timeout 3;\nstop-timeout 4; }", `e.res:3:1: duplicate key "stop-timeout" in promoter section (first at e.res:2:12)`},
		{"bad attach", "promoter { attach-device true; }", `invalid attach-device "true" (expected yes or no)`},
		{"empty escalation", `promoter { on-stop-failure ""; }`, `empty on-stop-failure`},
		{"escalation two values", `promoter { on-stop-failure reboot now; }`, `expected ";" after value of "on-stop-failure", found "now"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("e.res", []byte(res(tc.body)))
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
	_, err := Parse("e.res", []byte("common { promoter { } }\n"+res("")))
	require.ErrorContains(t, err, `e.res:1:10: unknown section "promoter" in common section`)
}

func TestPromoterRedactedCopies(t *testing.T) {
	r := parseOne(t, promoterExample)
	red := r.Redacted()
	require.Equal(t, r.Promoter, red.Promoter)
	red.Promoter.Start[2].Params[0].Value = "changed"
	red.Promoter.Start = append(red.Promoter.Start[:1], Service{Kind: ServiceSystemd, Unit: "x.service"})
	red.Promoter.OnStopFailure = "changed"
	require.Equal(t, "10.9.42.1", r.Promoter.Start[2].Params[0].Value, "Redacted must copy the start list")
	require.Equal(t, "mariadb.service", r.Promoter.Start[1].Unit)
	require.Equal(t, "echo b > /proc/sysrq-trigger", r.Promoter.OnStopFailure)
}

func TestShellQuoteRoundTrip(t *testing.T) {
	for _, v := range []string{"", "plain", "a b", "it's", `"dq"`, `back\slash`, "tab\there", "'", `'\''`, "é ü", "$HOME `x`"} {
		words, err := shellSplit("x=" + shellQuote(v))
		require.NoError(t, err, "%q", v)
		require.Equal(t, []string{"x=" + v}, words, "%q quoted as %s", v, shellQuote(v))
	}
}
