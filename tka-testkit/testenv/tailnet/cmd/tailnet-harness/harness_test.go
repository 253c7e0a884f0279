package main

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	"tailscale.com/tailcfg"
)

func TestParseNodeFlag(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    nodeSpec
		wantErr bool
	}{
		{in: "laptop=alice@example.com", want: nodeSpec{Name: "laptop", User: "alice@example.com"}},
		{in: "cluster=tag:tka", want: nodeSpec{Name: "cluster", Tags: []string{"tag:tka"}}},
		{in: "ci=tag:a,tag:b", want: nodeSpec{Name: "ci", Tags: []string{"tag:a", "tag:b"}}},
		{in: "laptop", wantErr: true},
		{in: "Laptop=alice@example.com", wantErr: true},
		{in: "laptop=alice", wantErr: true},
		{in: "ci=tag:a,b", wantErr: true},
		{in: "ci=tag:", wantErr: true},
	} {
		got, err := parseNodeFlag(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseNodeFlag(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && (got.Name != tc.want.Name || got.User != tc.want.User || !slices.Equal(got.Tags, tc.want.Tags)) {
			t.Errorf("parseNodeFlag(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestGrantValidate(t *testing.T) {
	ok := Grant{Src: "a", Dst: "b", Caps: map[string][]json.RawMessage{"x": {json.RawMessage(`{"role":"view"}`)}}}
	if err := ok.validate(); err != nil {
		t.Errorf("valid grant: %v", err)
	}
	for _, g := range []Grant{
		{Dst: "b", Caps: ok.Caps},
		{Src: "a", Dst: "b"},
		{Src: "a", Dst: "b", Caps: map[string][]json.RawMessage{"": {json.RawMessage(`1`)}}},
		{Src: "a", Dst: "b", Caps: map[string][]json.RawMessage{"x": {json.RawMessage(`{`)}}},
	} {
		if g.validate() == nil {
			t.Errorf("grant %+v: no error", g)
		}
	}
}

func testNode(name string, id int) *tailcfg.Node {
	v4 := netip.AddrFrom4([4]byte{100, 64, 0, byte(id)})
	v6 := netip.MustParseAddr("fd7a:115c:a1e0::1").Next()
	hi := &tailcfg.Hostinfo{Hostname: name}
	return &tailcfg.Node{
		ID:        tailcfg.NodeID(id),
		Addresses: []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)},
		Hostinfo:  hi.View(),
	}
}

func TestPacketFilter(t *testing.T) {
	cp := &controlPlane{grants: []Grant{
		{Src: "laptop", Dst: "cluster", Caps: map[string][]json.RawMessage{"c": {json.RawMessage(`{"role":"view"}`)}}},
		{Src: "ci", Dst: "laptop", Caps: map[string][]json.RawMessage{"c": {json.RawMessage(`1`)}}},
		{Src: "*", Dst: "*", Caps: map[string][]json.RawMessage{"d": {json.RawMessage(`true`)}}},
		{Src: "gone", Dst: "cluster", Caps: map[string][]json.RawMessage{"c": {json.RawMessage(`2`)}}},
	}}
	cluster, laptop, ci := testNode("cluster", 1), testNode("laptop", 2), testNode("ci", 3)
	rules := cp.packetFilterLocked(cluster, []*tailcfg.Node{laptop, ci})
	if len(rules) != 3 {
		t.Fatalf("got %d rules, want 3 (allow-all, laptop grant, * grant): %+v", len(rules), rules)
	}
	if !slices.Equal(rules[0].SrcIPs, []string{"*"}) || len(rules[0].DstPorts) != 1 {
		t.Errorf("rule 0 is not allow-all: %+v", rules[0])
	}
	r := rules[1]
	if !slices.Equal(r.SrcIPs, []string{"100.64.0.2", laptop.Addresses[1].Addr().String()}) {
		t.Errorf("rule 1 SrcIPs = %v", r.SrcIPs)
	}
	if len(r.CapGrant) != 1 || !slices.Equal(r.CapGrant[0].Dsts, cluster.Addresses) {
		t.Fatalf("rule 1 CapGrant = %+v", r.CapGrant)
	}
	if got := r.CapGrant[0].CapMap["c"]; len(got) != 1 || string(got[0]) != `{"role":"view"}` {
		t.Errorf("rule 1 CapMap = %v", r.CapGrant[0].CapMap)
	}
	if !slices.Equal(rules[2].SrcIPs, []string{"*"}) {
		t.Errorf("rule 2 SrcIPs = %v", rules[2].SrcIPs)
	}
}

func TestLoopbackOnly(t *testing.T) {
	in := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:1"),
		netip.MustParseAddrPort("192.0.2.2:2"),
		netip.MustParseAddrPort("[::1]:3"),
		netip.MustParseAddrPort("[fd00::2]:4"),
	}
	got := loopbackOnly(in)
	want := []netip.AddrPort{in[0], in[2]}
	if !slices.Equal(got, want) {
		t.Errorf("loopbackOnly = %v, want %v", got, want)
	}
}
