package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/net/proxy"
)

// The capability recorded in the fixtures.
const fixtureCap = "tka.dev/cap/kubernetes"

// recordMain starts a tailnet with three nodes, grants capabilities, and
// saves real LocalAPI answers of the "cluster" node (and one of "laptop")
// as fixtures, each with a NAME.meta.json sidecar describing the request
// and the HTTP status.
func recordMain(args []string) error {
	fs := flag.NewFlagSet("tailnet-harness record", flag.ExitOnError)
	var c commonFlags
	c.register(fs)
	outDir := fs.String("out", "fixtures-recorded", "directory to write the fixtures to")
	fs.Parse(args)

	h, err := newHarness(c, os.Stderr)
	if err != nil {
		return err
	}
	defer h.shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	specs := []nodeSpec{
		{Name: "cluster", Tags: []string{"tag:tka"}},
		{Name: "laptop", User: "alice@example.com"},
		{Name: "ci", Tags: []string{"tag:ci"}},
	}
	nodes := map[string]NodeInfo{}
	for _, s := range specs {
		n, err := h.startNode(ctx, s)
		if err != nil {
			return err
		}
		nodes[s.Name] = n.nodeInfo()
		h.emit(map[string]any{"node": n.nodeInfo()})
	}
	cluster, laptop, ci := nodes["cluster"], nodes["laptop"], nodes["ci"]

	grant := func(src, dst, value string) Grant {
		return Grant{Src: src, Dst: dst, Caps: map[string][]json.RawMessage{fixtureCap: {json.RawMessage(value)}}}
	}
	if err := h.setGrants(ctx, []Grant{
		grant("laptop", "cluster", `{"role":"view"}`),
		grant("ci", "cluster", `{"role":"edit","namespaces":["ci"]}`),
	}); err != nil {
		return err
	}

	rec := &recorder{dir: *outDir, ctx: ctx}

	// A connection from laptop to cluster through laptop's SOCKS5 proxy.
	// cluster's tailscaled (userspace networking) re-dials it to
	// 127.0.0.1:PORT; whois on the accepted remote address names laptop.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if conn, err := ln.Accept(); err == nil {
			accepted <- conn
		}
	}()
	dialer, err := proxy.SOCKS5("tcp", laptop.SOCKS5, nil, proxy.Direct)
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	out, err := dialer.Dial("tcp", net.JoinHostPort(cluster.IPv4, fmt.Sprint(port)))
	if err != nil {
		return fmt.Errorf("dialing cluster through laptop's SOCKS5: %w", err)
	}
	defer out.Close()
	var in net.Conn
	select {
	case in = <-accepted:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("no connection arrived at 127.0.0.1:%d", port)
	}
	defer in.Close()
	remote := in.RemoteAddr().String()

	// Retry briefly: the proxy mapping can lag the dial.
	if err := rec.whois("whois-user.json", cluster, remote, 200, true); err != nil {
		return err
	}
	steps := []struct {
		file   string
		node   NodeInfo
		addr   string
		status int
	}{
		{"whois-user-by-ip.json", cluster, laptop.IPv4, 200},
		{"whois-user-by-ipv6.json", cluster, laptop.IPv6, 200},
		{"whois-tagged.json", cluster, ci.IPv4, 200},
		{"whois-tagged-nocaps.json", laptop, cluster.IPv4, 200},
		{"whois-notfound.txt", cluster, "127.0.0.1:1", 404},
		{"whois-notfound-ip.txt", cluster, "100.100.0.200", 404},
		{"whois-badaddr.txt", cluster, "not-an-address", 400},
	}
	for _, s := range steps {
		if err := rec.whois(s.file, s.node, s.addr, s.status, false); err != nil {
			return err
		}
	}
	if err := rec.get("whois-badhost.txt", cluster, "/localapi/v0/whois?addr="+url.QueryEscape(laptop.IPv4), "example.com", 403); err != nil {
		return err
	}
	if err := rec.get("status.json", cluster, "/localapi/v0/status", "local-tailscaled.sock", 200); err != nil {
		return err
	}

	// Two grants for the same pair: tailscaled concatenates the values.
	if err := h.setGrants(ctx, []Grant{
		grant("laptop", "cluster", `{"role":"view"}`),
		grant("laptop", "cluster", `{"role":"edit","namespaces":["dev"]}`),
		grant("ci", "cluster", `{"role":"edit","namespaces":["ci"]}`),
	}); err != nil {
		return err
	}
	if err := rec.whois("whois-user-two-grants.json", cluster, laptop.IPv4, 200, false); err != nil {
		return err
	}
	h.emit(map[string]any{"recorded": rec.files, "dir": *outDir})
	return nil
}

type recorder struct {
	dir   string
	ctx   context.Context
	files []string
}

func (r *recorder) whois(file string, n NodeInfo, addr string, want int, retry404 bool) error {
	path := "/localapi/v0/whois?addr=" + url.QueryEscape(addr)
	var err error
	for i := 0; i < 50; i++ {
		err = r.get(file, n, path, "local-tailscaled.sock", want)
		if err == nil || !retry404 || !strings.Contains(err.Error(), "got 404") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func (r *recorder) get(file string, n NodeInfo, path, host string, want int) error {
	code, ctype, body, err := localAPIHost(r.ctx, n.Socket, path, host)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if code != want {
		return fmt.Errorf("%s: GET %s on %s: got %d, want %d: %s", file, path, n.Name, code, want, firstLine(body))
	}
	if strings.HasSuffix(file, ".json") {
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			return fmt.Errorf("%s: answer is not JSON: %w", file, err)
		}
	}
	if err := os.WriteFile(filepath.Join(r.dir, file), body, 0o644); err != nil {
		return err
	}
	meta := map[string]any{
		"request":      "GET " + path,
		"host":         host,
		"node":         n.Name,
		"status":       code,
		"content_type": ctype,
	}
	mb, _ := json.MarshalIndent(meta, "", "  ")
	metaFile := strings.TrimSuffix(strings.TrimSuffix(file, ".json"), ".txt") + ".meta.json"
	if err := os.WriteFile(filepath.Join(r.dir, metaFile), append(mb, '\n'), 0o644); err != nil {
		return err
	}
	r.files = append(r.files, file)
	return nil
}
