package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"tailscale.com/derp/derpserver"
	"tailscale.com/net/stun"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// taggedDevicesUserID and taggedDevicesLogin are what the production control
// server reports as the owner of tagged nodes.
const (
	taggedDevicesUserID tailcfg.UserID = 2147455555
	taggedDevicesLogin                 = "tagged-devices"
	firstUserID         tailcfg.UserID = 10001
)

// nodeSpec is how a node is declared: a name (also its hostname and
// MagicDNS label) and either a user login name or a set of tags.
type nodeSpec struct {
	Name string   `json:"name"`
	User string   `json:"user,omitempty"`
	Tags []string `json:"tags,omitempty"`
}

func (s nodeSpec) validate() error {
	if s.Name == "" {
		return fmt.Errorf("node name is empty")
	}
	for _, r := range s.Name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("node name %q: only a-z, 0-9 and '-' are allowed", s.Name)
		}
	}
	if (s.User == "") == (len(s.Tags) == 0) {
		return fmt.Errorf("node %q: give exactly one of user or tags", s.Name)
	}
	if s.User != "" && !strings.Contains(s.User, "@") {
		return fmt.Errorf("node %q: user %q is not a login name (user@domain)", s.Name, s.User)
	}
	for _, t := range s.Tags {
		if !strings.HasPrefix(t, "tag:") || len(t) == len("tag:") {
			return fmt.Errorf("node %q: tag %q must look like tag:NAME", s.Name, t)
		}
	}
	return nil
}

// Grant gives the src node app capabilities on the dst node, as a grant
// with "app" does in a tailnet policy file. "*" as src or dst means every
// node. Values are arbitrary JSON; several grants for the same pair are
// concatenated by tailscaled.
type Grant struct {
	Src  string                       `json:"src"`
	Dst  string                       `json:"dst"`
	Caps map[string][]json.RawMessage `json:"caps"`
}

func (g Grant) validate() error {
	if g.Src == "" || g.Dst == "" {
		return fmt.Errorf("grant needs src and dst")
	}
	if len(g.Caps) == 0 {
		return fmt.Errorf("grant %s -> %s has no caps", g.Src, g.Dst)
	}
	for k, vs := range g.Caps {
		if k == "" {
			return fmt.Errorf("grant %s -> %s: empty capability name", g.Src, g.Dst)
		}
		for _, v := range vs {
			if !json.Valid(v) {
				return fmt.Errorf("grant %s -> %s: capability %q has a value that is not JSON", g.Src, g.Dst, k)
			}
		}
	}
	return nil
}

// controlPlane is the test control server, a loopback DERP relay and a
// loopback STUN server. Map responses are produced by testcontrol and then
// rewritten here, on every change, from the node specs and the whole grant
// table: owners (user login names, or tagged-devices), tags, the packet
// filter with CapGrants, and peer endpoints limited to loopback.
type controlPlane struct {
	logf    logger.Logf
	domain  string
	s       *testcontrol.Server
	derpMap *tailcfg.DERPMap

	controlURL string
	derpAddr   string
	stunAddr   string

	ctlLn   net.Listener
	ctlSrv  *http.Server
	derp    *derpserver.Server
	derpSrv *httptest.Server
	stunPC  net.PacketConn

	updateMu sync.Mutex // serialises read-modify-write of testcontrol nodes

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	specs   map[string]nodeSpec
	userIDs map[string]tailcfg.UserID
	grants  []Grant
}

func newControlPlane(logf logger.Logf, domain string) (*controlPlane, error) {
	cp := &controlPlane{
		logf:    logf,
		domain:  domain,
		changed: make(chan struct{}),
		specs:   map[string]nodeSpec{},
		userIDs: map[string]tailcfg.UserID{},
	}
	ok := false
	defer func() {
		if !ok {
			cp.close()
		}
	}()

	// DERP over TLS (self-signed; the DERP map marks it InsecureForTests).
	cp.derp = derpserver.New(key.NewNode(), logger.WithPrefix(logf, "derp: "))
	cp.derpSrv = httptest.NewUnstartedServer(derpserver.Handler(cp.derp))
	cp.derpSrv.Listener.Close()
	derpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cp.derpSrv.Listener = derpLn
	cp.derpSrv.Config.ErrorLog = logger.StdLogger(logger.WithPrefix(logf, "derp-http: "))
	cp.derpSrv.Config.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
	cp.derpSrv.StartTLS()
	cp.derpAddr = derpLn.Addr().String()

	// STUN, so that netcheck finds UDP working on loopback.
	cp.stunPC, err = net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cp.stunAddr = cp.stunPC.LocalAddr().String()
	go cp.serveSTUN()

	derpPort := derpLn.Addr().(*net.TCPAddr).Port
	stunPort := cp.stunPC.LocalAddr().(*net.UDPAddr).Port
	// Never nil: a nil DERPMap means the public DERP servers.
	cp.derpMap = &tailcfg.DERPMap{
		OmitDefaultRegions: true,
		Regions: map[int]*tailcfg.DERPRegion{
			1: {
				RegionID:   1,
				RegionCode: "loopback",
				RegionName: "Loopback",
				Nodes: []*tailcfg.DERPNode{{
					Name:             "1a",
					RegionID:         1,
					HostName:         "127.0.0.1",
					IPv4:             "127.0.0.1",
					IPv6:             "none",
					STUNPort:         stunPort,
					DERPPort:         derpPort,
					STUNTestIP:       "127.0.0.1",
					InsecureForTests: true,
				}},
			},
		},
	}

	cp.ctlLn, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cp.controlURL = "http://" + cp.ctlLn.Addr().String()
	cp.s = &testcontrol.Server{
		Logf:            logger.WithPrefix(logf, "control: "),
		DERPMap:         cp.derpMap,
		MagicDNSDomain:  domain,
		DNSConfig:       &tailcfg.DNSConfig{Domains: []string{domain}, Proxied: true},
		AllOnline:       true,
		TagOwners:       map[string][]string{}, // non-nil: tags requested at sign-up are kept
		ExplicitBaseURL: cp.controlURL,
		AltMapStream:    cp.mapStream,
	}
	cp.ctlSrv = &http.Server{
		Handler:  cp.s,
		ErrorLog: logger.StdLogger(logger.WithPrefix(logf, "control-http: ")),
	}
	go cp.ctlSrv.Serve(cp.ctlLn)
	ok = true
	return cp, nil
}

func (cp *controlPlane) close() {
	if cp.ctlSrv != nil {
		cp.ctlSrv.Close()
	} else if cp.ctlLn != nil {
		cp.ctlLn.Close()
	}
	if cp.derpSrv != nil {
		cp.derpSrv.CloseClientConnections()
		cp.derpSrv.Close()
	}
	if cp.derp != nil {
		cp.derp.Close()
	}
	if cp.stunPC != nil {
		cp.stunPC.Close()
	}
}

func (cp *controlPlane) serveSTUN() {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := cp.stunPC.ReadFrom(buf)
		if err != nil {
			return
		}
		pkt := buf[:n]
		if !stun.Is(pkt) {
			continue
		}
		txid, err := stun.ParseBindingRequest(pkt)
		if err != nil {
			continue
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		cp.stunPC.WriteTo(stun.Response(txid, ua.AddrPort()), addr)
	}
}

// notify wakes every map stream so that it sends a fresh full map.
func (cp *controlPlane) notify() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	close(cp.changed)
	cp.changed = make(chan struct{})
}

func (cp *controlPlane) changedChan() <-chan struct{} {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.changed
}

func (cp *controlPlane) addSpec(s nodeSpec) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if _, dup := cp.specs[s.Name]; dup {
		return fmt.Errorf("node %q already exists", s.Name)
	}
	cp.specs[s.Name] = s
	if s.User != "" {
		if _, ok := cp.userIDs[s.User]; !ok {
			cp.userIDs[s.User] = firstUserID + tailcfg.UserID(len(cp.userIDs))
		}
	}
	return nil
}

func (cp *controlPlane) removeSpec(name string) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	delete(cp.specs, name)
}

func (cp *controlPlane) hasSpec(name string) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	_, ok := cp.specs[name]
	return ok
}

// setGrants replaces the whole grant table and wakes every map stream.
func (cp *controlPlane) setGrants(gs []Grant) {
	cp.mu.Lock()
	cp.grants = slices.Clone(gs)
	cp.mu.Unlock()
	cp.notify()
}

func (cp *controlPlane) getGrants() []Grant {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return slices.Clone(cp.grants)
}

// mapStream replaces testcontrol's map poll handler. It records what the
// client reports (endpoints, disco key, hostinfo) the way testcontrol does,
// and sends a complete, rewritten map on every change.
func (cp *controlPlane) mapStream(ctx context.Context, w testcontrol.MapStreamWriter, req *tailcfg.MapRequest) {
	// Streaming polls from capability version 68 on carry no updates.
	streamingNonUpdate := req.Stream && req.Version >= 68
	if !req.ReadOnly && !streamingNonUpdate {
		if ctx.Err() != nil {
			return
		}
		cp.applyClientUpdate(req)
	}
	if !req.Stream {
		if req.OmitPeers {
			_ = w.SendMapMessage(&tailcfg.MapResponse{})
			return
		}
		if res := cp.mapResponse(req.NodeKey); res != nil {
			_ = w.SendMapMessage(res)
		}
		return
	}
	cp.notify() // peers learn that this node is polling
	keepAlive := time.NewTicker(30 * time.Second)
	defer keepAlive.Stop()
	for {
		ch := cp.changedChan()
		res := cp.mapResponse(req.NodeKey)
		if res == nil {
			return
		}
		if err := w.SendMapMessage(res); err != nil {
			return
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				break wait
			case <-keepAlive.C:
				if err := w.SendMapMessage(&tailcfg.MapResponse{KeepAlive: true}); err != nil {
					return
				}
			}
		}
	}
}

func (cp *controlPlane) applyClientUpdate(req *tailcfg.MapRequest) {
	cp.updateMu.Lock()
	n := cp.s.Node(req.NodeKey)
	if n == nil {
		cp.updateMu.Unlock()
		return
	}
	n.Endpoints = loopbackOnly(req.Endpoints)
	n.DiscoKey = req.DiscoKey
	n.Cap = req.Version
	if req.Hostinfo != nil {
		n.Hostinfo = req.Hostinfo.View()
		if ni := req.Hostinfo.NetInfo; ni != nil && ni.PreferredDERP != 0 {
			n.HomeDERP = ni.PreferredDERP
		}
	}
	cp.s.UpdateNode(n)
	cp.updateMu.Unlock()
	cp.notify()
}

// loopbackOnly keeps the endpoints on loopback: nodes never try to reach
// each other on any other address.
func loopbackOnly(eps []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ep := range eps {
		if ep.Addr().IsLoopback() {
			out = append(out, ep)
		}
	}
	return out
}

func displayName(login string) string {
	local, _, _ := strings.Cut(login, "@")
	if local == "" {
		return login
	}
	return strings.ToUpper(local[:1]) + local[1:]
}

// mapResponse builds the full map for one node.
func (cp *controlPlane) mapResponse(nk key.NodePublic) *tailcfg.MapResponse {
	res, err := cp.s.MapResponse(&tailcfg.MapRequest{NodeKey: nk})
	if err != nil || res == nil || res.Node == nil {
		return nil
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()

	profiles := map[tailcfg.UserID]tailcfg.UserProfile{}
	for _, up := range res.UserProfiles {
		profiles[up.ID] = up
	}
	rewrite := func(n *tailcfg.Node) {
		n.Endpoints = loopbackOnly(n.Endpoints)
		spec, ok := cp.specs[n.Hostinfo.Hostname()]
		if !ok {
			return
		}
		if len(spec.Tags) > 0 {
			n.Tags = slices.Clone(spec.Tags)
			n.User = taggedDevicesUserID
			profiles[taggedDevicesUserID] = tailcfg.UserProfile{
				ID:          taggedDevicesUserID,
				LoginName:   taggedDevicesLogin,
				DisplayName: taggedDevicesLogin,
			}
			return
		}
		id := cp.userIDs[spec.User]
		n.Tags = nil
		n.User = id
		profiles[id] = tailcfg.UserProfile{
			ID:          id,
			LoginName:   spec.User,
			DisplayName: displayName(spec.User),
		}
	}
	rewrite(res.Node)
	for _, p := range res.Peers {
		rewrite(p)
	}

	var used []tailcfg.UserID
	for _, n := range append([]*tailcfg.Node{res.Node}, res.Peers...) {
		if !slices.Contains(used, n.User) {
			used = append(used, n.User)
		}
	}
	sort.Slice(used, func(i, j int) bool { return used[i] < used[j] })
	res.UserProfiles = res.UserProfiles[:0]
	for _, id := range used {
		if up, ok := profiles[id]; ok {
			res.UserProfiles = append(res.UserProfiles, up)
		}
	}

	res.PacketFilter = cp.packetFilterLocked(res.Node, res.Peers)
	// testcontrol sends a fixed time in 2020; tailscaled then logs that its
	// clock is before the epoch it expects. Send the real time.
	now := time.Now().UTC()
	res.ControlTime = &now
	return res
}

// packetFilterLocked is the filter for traffic to self: everything is
// allowed at the IP level, and each grant whose dst is self adds a rule
// with a CapGrant for its src.
func (cp *controlPlane) packetFilterLocked(self *tailcfg.Node, peers []*tailcfg.Node) []tailcfg.FilterRule {
	rules := []tailcfg.FilterRule{{
		SrcIPs:   []string{"*"},
		DstPorts: []tailcfg.NetPortRange{{IP: "*", Ports: tailcfg.PortRangeAny}},
	}}
	selfName := self.Hostinfo.Hostname()
	byName := map[string]*tailcfg.Node{}
	for _, p := range peers {
		byName[p.Hostinfo.Hostname()] = p
	}
	byName[selfName] = self
	var dsts []netip.Prefix
	for _, a := range self.Addresses {
		dsts = append(dsts, netip.PrefixFrom(a.Addr(), a.Addr().BitLen()))
	}
	for _, g := range cp.grants {
		if g.Dst != "*" && g.Dst != selfName {
			continue
		}
		var srcs []string
		if g.Src == "*" {
			srcs = []string{"*"}
		} else {
			src, ok := byName[g.Src]
			if !ok {
				continue
			}
			for _, a := range src.Addresses {
				srcs = append(srcs, a.Addr().String())
			}
		}
		capMap := tailcfg.PeerCapMap{}
		names := make([]string, 0, len(g.Caps))
		for k := range g.Caps {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			vals := []tailcfg.RawMessage{}
			for _, v := range g.Caps[k] {
				vals = append(vals, tailcfg.RawMessage(v))
			}
			capMap[tailcfg.PeerCapability(k)] = vals
		}
		rules = append(rules, tailcfg.FilterRule{
			SrcIPs:   srcs,
			CapGrant: []tailcfg.CapGrant{{Dsts: dsts, CapMap: capMap}},
		})
	}
	return rules
}

// nodeByHostname returns testcontrol's record of a node.
func (cp *controlPlane) nodeByHostname(name string) *tailcfg.Node {
	for _, n := range cp.s.AllNodes() {
		if n.Hostinfo.Valid() && n.Hostinfo.Hostname() == name {
			return n
		}
	}
	return nil
}

func nopLogf(string, ...any) {}

func stderrLogf(format string, args ...any) { log.Printf(format, args...) }
