package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// /metrics serves drbd-reactor's names with the twinbd_ prefix; enum
// states are one series per value, the current one 1.
func TestMetricsEndpoint(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	sock, _ := startAlphaWith(t, func(o *Options) { o.Metrics = addr })
	resp, err := Call(context.Background(), sock, Request{Verb: "primary", Resource: "r0", Force: true})
	require.NoError(t, err)
	require.Equal(t, CodeOK, resp.Code, resp.Error)

	var body string
	require.Eventually(t, func() bool {
		r, err := http.Get(fmt.Sprintf("http://%s/metrics", addr))
		if err != nil {
			return false
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		return r.StatusCode == 200
	}, 5*time.Second, 20*time.Millisecond)
	for _, want := range []string{
		`twinbd_resource_role{name="r0",role="Primary"} 1`,
		`twinbd_resource_role{name="r0",role="Secondary"} 0`,
		`twinbd_resource_suspended{name="r0"} 0`,
		`twinbd_resource_maypromote{name="r0"} 0`,
		`twinbd_device_state{name="r0",state="UpToDate",volume="0"} 1`,
		`twinbd_device_quorum{name="r0",volume="0"} 1`,
		`twinbd_connection_state{conn_name="beta",name="r0",peer_node_id="1",state="Connecting"} 1`,
		`twinbd_peerdevice_replication_state{conn_name="beta",name="r0",peer_node_id="1",state="Off",volume="0"} 1`,
		`twinbd_peerdevice_outofsync_bytes{conn_name="beta",name="r0",peer_node_id="1",volume="0"}`,
		`twinbd_device_size_bytes{name="r0",volume="0"}`,
		`twinbd_device_write_latency_seconds_bucket{name="r0",volume="0",le="0.001"}`,
		`twinbd_peerdevice_write_latency_seconds_count{name="r0",volume="0"}`,
		`# TYPE twinbd_device_written_bytes_total counter`,
	} {
		require.True(t, strings.Contains(body, want), "metrics lack %q:\n%s", want, body)
	}
}

// The shipped alert rules and Grafana dashboard only use metric names the
// daemon exports (a renamed metric fails here, not silently in a site's
// Prometheus).
func TestAlertRulesAndDashboardUseExportedNames(t *testing.T) {
	exported := map[string]bool{}
	ch := make(chan *prometheus.Desc, 64)
	go func() { newCollector(&Daemon{}).Describe(ch); close(ch) }()
	fq := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range ch {
		m := fq.FindStringSubmatch(d.String())
		require.NotNil(t, m, d.String())
		exported[m[1]] = true
	}
	require.True(t, exported["twinbd_resource_role"])

	name := regexp.MustCompile(`twinbd_[a-z_]+`)
	check := func(where, expr string) {
		for _, n := range name.FindAllString(expr, -1) {
			base := n
			for _, suf := range []string{"_bucket", "_count", "_sum"} {
				if b, ok := strings.CutSuffix(n, suf); ok && exported[b] {
					base = b
				}
			}
			require.True(t, exported[base], "%s uses %s, which the daemon does not export", where, n)
		}
	}

	b, err := os.ReadFile("../contrib/prometheus/twinbd-alerts.yml")
	require.NoError(t, err)
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
				For   string `yaml:"for"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	require.NoError(t, yaml.Unmarshal(b, &rules))
	require.Len(t, rules.Groups, 1)
	alerts := map[string]bool{}
	for _, r := range rules.Groups[0].Rules {
		require.NotEmpty(t, r.Expr, r.Alert)
		_, err := time.ParseDuration(r.For)
		require.NoError(t, err, r.Alert)
		check(r.Alert, r.Expr)
		alerts[r.Alert] = true
	}
	// The alerts CONVENTIONS.md says operators expect.
	for _, a := range []string{"TwinbdPeerNotConnected", "TwinbdDiskNotUpToDate", "TwinbdNoQuorum", "TwinbdIOSuspended", "TwinbdResyncNotProgressing"} {
		require.True(t, alerts[a], a)
	}

	b, err = os.ReadFile("../contrib/grafana/twinbd-dashboard.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &dash))
	require.NotEmpty(t, dash.Panels)
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, p.Title)
		for _, tg := range p.Targets {
			check("dashboard panel "+p.Title, tg.Expr)
		}
	}
}
