package daemon

// Prometheus metrics with drbd-reactor's names under the twinbd_ prefix
// (CONVENTIONS.md): enum states as one series per value (1 current, 0
// others), labels name, conn_name, peer_node_id, volume. The values are
// read from each resource's Status at scrape time, so nothing is cached.

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twinbd/twinbd/replication"
)

var (
	roleNames     = []string{"Primary", "Secondary", "Unknown"}
	diskNames     = []string{"Diskless", "Attaching", "Detaching", "Failed", "Negotiating", "Inconsistent", "Outdated", "DUnknown", "Consistent", "UpToDate"}
	connNames     = []string{"StandAlone", "Disconnecting", "Unconnected", "Timeout", "BrokenPipe", "NetworkFailure", "ProtocolError", "TearDown", "Connecting", "Connected"}
	replNames     = []string{"Off", "Established", "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT", "Ahead", "Behind"}
	resLabels     = []string{"name"}
	devLabels     = []string{"name", "volume"}
	connLabels    = []string{"name", "conn_name", "peer_node_id"}
	peerDevLabels = []string{"name", "conn_name", "peer_node_id", "volume"}
)

func desc(name, help string, labels []string, enum string) *prometheus.Desc {
	if enum != "" {
		labels = append(append([]string(nil), labels...), enum)
	}
	return prometheus.NewDesc("twinbd_"+name, help, labels, nil)
}

// collector exports every resource's state at scrape time.
type collector struct {
	d *Daemon

	role, suspended, mayPromote, promScore                 *prometheus.Desc
	connState, congested, apInFlight, rsInFlight           *prometheus.Desc
	replState, outOfSync, sent, received, pending, unacked *prometheus.Desc
	devState, quorum, unintDiskless, size, read, written   *prometheus.Desc
	upperPending, lowerPending, alWrites, bmWrites         *prometheus.Desc
	latLocal, latPeer, witnessUp                           *prometheus.Desc
}

func newCollector(d *Daemon) *collector {
	return &collector{
		d:             d,
		role:          desc("resource_role", "Role of the resource (1 for the current role).", resLabels, "role"),
		suspended:     desc("resource_suspended", "1 while I/O is suspended (quorum or fencing).", resLabels, ""),
		mayPromote:    desc("resource_maypromote", "1 if `primary` without --force may succeed now.", resLabels, ""),
		promScore:     desc("resource_promotionscore", "Promotion score (10000 UpToDate and connected, 1000 UpToDate, 5 Consistent).", resLabels, ""),
		connState:     desc("connection_state", "Connection state (1 for the current state).", connLabels, "state"),
		congested:     desc("connection_congested", "1 when the link is congested.", connLabels, ""),
		apInFlight:    desc("connection_apinflight_bytes", "Application bytes sent to the peer and not yet answered.", connLabels, ""),
		rsInFlight:    desc("connection_rsinflight_bytes", "Resync bytes in flight.", connLabels, ""),
		replState:     desc("peerdevice_replication_state", "Replication state (1 for the current state).", peerDevLabels, "state"),
		outOfSync:     desc("peerdevice_outofsync_bytes", "Bytes marked out of sync with the peer.", peerDevLabels, ""),
		sent:          desc("peerdevice_sent_bytes_total", "Bytes sent to the peer (application and resync).", peerDevLabels, ""),
		received:      desc("peerdevice_received_bytes_total", "Bytes received from the peer.", peerDevLabels, ""),
		pending:       desc("peerdevice_pending", "Requests sent to the peer and not answered.", peerDevLabels, ""),
		unacked:       desc("peerdevice_unacked", "Requests from the peer not yet answered.", peerDevLabels, ""),
		devState:      desc("device_state", "Local disk state (1 for the current state).", devLabels, "state"),
		quorum:        desc("device_quorum", "1 while this node has quorum.", devLabels, ""),
		unintDiskless: desc("device_unintentionaldiskless", "1 when the disk was lost without the operator detaching it.", devLabels, ""),
		size:          desc("device_size_bytes", "Size of the replicated device.", devLabels, ""),
		read:          desc("device_read_bytes_total", "Bytes read through the export.", devLabels, ""),
		written:       desc("device_written_bytes_total", "Bytes written through the export.", devLabels, ""),
		upperPending:  desc("device_upperpending", "Requests from NBD clients not yet answered.", devLabels, ""),
		lowerPending:  desc("device_lowerpending", "Requests to the local disk not yet completed.", devLabels, ""),
		alWrites:      desc("device_al_writes_total", "Activity-log transactions written.", devLabels, ""),
		bmWrites:      desc("device_bm_writes_total", "Bitmap blocks written.", devLabels, ""),
		latLocal:      desc("device_write_latency_seconds", "Latency of writes to the local disk.", devLabels, ""),
		latPeer:       desc("peerdevice_write_latency_seconds", "Latency of a replicated write from the local write's start to the peer's answer the protocol waits for.", devLabels, ""),
		witnessUp:     desc("resource_witness_connected", "1 while the witness answers (absent without a witness).", resLabels, ""),
	}
}

// Describe sends every metric's description (also with no resource up).
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.role, c.suspended, c.mayPromote, c.promScore, c.connState, c.congested, c.apInFlight, c.rsInFlight,
		c.replState, c.outOfSync, c.sent, c.received, c.pending, c.unacked, c.devState, c.quorum,
		c.unintDiskless, c.size, c.read, c.written, c.upperPending, c.lowerPending, c.alWrites, c.bmWrites,
		c.latLocal, c.latPeer, c.witnessUp,
	} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func enum(ch chan<- prometheus.Metric, d *prometheus.Desc, values []string, cur string, labels ...string) {
	for _, v := range values {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, b2f(v == cur), append(labels, v)...)
	}
}

func hist(ch chan<- prometheus.Metric, d *prometheus.Desc, h replication.Histogram, labels ...string) {
	ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum, h.Buckets, labels...)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.d.sorted() {
		st := r.Status()
		name := st.Name
		g := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
		}
		ctr := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
		}
		enum(ch, c.role, roleNames, st.Role, name)
		g(c.suspended, b2f(st.Suspended), name)
		may, score := r.Promotion()
		g(c.mayPromote, b2f(may), name)
		g(c.promScore, float64(score), name)
		if st.Witness != "" {
			g(c.witnessUp, b2f(st.Witness == "connected"), name)
		}
		local, peer := r.WriteLatency()
		for _, dv := range st.Devices {
			vol := strconv.Itoa(dv.Volume)
			enum(ch, c.devState, diskNames, dv.DiskState, name, vol)
			g(c.quorum, b2f(dv.Quorum), name, vol)
			g(c.unintDiskless, b2f(dv.DiskState == "Diskless" && dv.DiskReason != replication.DetachedByOperator), name, vol)
			g(c.size, float64(dv.Size*1024), name, vol)
			ctr(c.read, float64(dv.Read*1024), name, vol)
			ctr(c.written, float64(dv.Written*1024), name, vol)
			g(c.upperPending, float64(dv.UpperPending), name, vol)
			g(c.lowerPending, float64(dv.LowerPending), name, vol)
			ctr(c.alWrites, float64(dv.ALWrites), name, vol)
			ctr(c.bmWrites, float64(dv.BMWrites), name, vol)
			hist(ch, c.latLocal, local, name, vol)
			if len(st.Connections) > 0 {
				hist(ch, c.latPeer, peer, name, vol)
			}
		}
		for _, cn := range st.Connections {
			id := strconv.Itoa(cn.PeerNodeID)
			enum(ch, c.connState, connNames, cn.ConnectionState, name, cn.Name, id)
			g(c.congested, b2f(cn.Congested), name, cn.Name, id)
			g(c.apInFlight, float64(cn.APInFlight), name, cn.Name, id)
			g(c.rsInFlight, float64(cn.RSInFlight), name, cn.Name, id)
			for _, pd := range cn.PeerDevices {
				vol := strconv.Itoa(pd.Volume)
				enum(ch, c.replState, replNames, pd.ReplicationState, name, cn.Name, id, vol)
				g(c.outOfSync, float64(pd.OutOfSync*1024), name, cn.Name, id, vol)
				ctr(c.sent, float64(pd.Sent*1024), name, cn.Name, id, vol)
				ctr(c.received, float64(pd.Received*1024), name, cn.Name, id, vol)
				g(c.pending, float64(pd.Pending), name, cn.Name, id, vol)
				g(c.unacked, float64(pd.Unacked), name, cn.Name, id, vol)
			}
		}
	}
}

// serveMetrics serves /metrics on addr until ctx ends.
func (d *Daemon) serveMetrics(ctx context.Context, addr string) (string, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(d))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server", "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { srv.Close() })
	return ln.Addr().String(), nil
}
