// Command tailnet-harness runs a complete tailnet on loopback for end-to-end
// tests: Tailscale's test control server, a DERP relay and a STUN server,
// and real tailscaled processes in userspace-networking mode, each with its
// own state directory, LocalAPI socket and SOCKS5 proxy. An admin HTTP API
// adds nodes and sets app capabilities (grants) between them.
//
//	tailnet-harness [run] [flags]      run until SIGINT/SIGTERM (or stdin EOF)
//	tailnet-harness record --out DIR   record LocalAPI fixtures and exit
//
// See ../../README.md for the flags and the admin API.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tailscale.com/types/logger"
)

type harness struct {
	cp          *controlPlane
	dir         string
	removeDir   bool
	tailscaled  string
	tailscale   string
	nodeTimeout time.Duration
	logf        logger.Logf

	trapURL  string
	trapSrv  *http.Server
	trapHits atomic.Int64

	adminLn  net.Listener
	adminSrv *http.Server

	outMu sync.Mutex
	out   io.Writer

	mu    sync.Mutex
	nodes map[string]*tsNode
	order []string

	grantMu sync.Mutex // serialises grant changes and their verification
	managed map[string]bool

	shutdownOnce sync.Once
	done         chan struct{}
}

type commonFlags struct {
	dir        string
	keep       bool
	domain     string
	tailscaled string
	tailscale  string
	timeout    time.Duration
	verbose    bool
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dir, "dir", "", "state directory for the nodes (default: a new temporary directory, removed on exit)")
	fs.BoolVar(&c.keep, "keep", false, "keep the state directory on exit")
	fs.StringVar(&c.domain, "domain", "tka-test.ts.net", "MagicDNS domain of the tailnet")
	fs.StringVar(&c.tailscaled, "tailscaled", "", "path to tailscaled (default: next to this program, then $PATH)")
	fs.StringVar(&c.tailscale, "tailscale", "", "path to the tailscale CLI (default: next to this program, then $PATH)")
	fs.DurationVar(&c.timeout, "node-timeout", 60*time.Second, "how long a node may take to come up")
	fs.BoolVar(&c.verbose, "v", false, "log control, DERP and harness details to stderr")
}

func findBinary(flagValue, name string) (string, error) {
	if flagValue != "" {
		return filepath.Abs(flagValue)
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("cannot find %s: pass --%s", name, name)
	}
	return filepath.Abs(p)
}

func newHarness(c commonFlags, out io.Writer) (*harness, error) {
	h := &harness{
		nodeTimeout: c.timeout,
		nodes:       map[string]*tsNode{},
		managed:     map[string]bool{},
		out:         out,
		done:        make(chan struct{}),
		logf:        nopLogf,
	}
	if c.verbose {
		h.logf = stderrLogf
	}
	var err error
	if h.tailscaled, err = findBinary(c.tailscaled, "tailscaled"); err != nil {
		return nil, err
	}
	if h.tailscale, err = findBinary(c.tailscale, "tailscale"); err != nil {
		return nil, err
	}
	if c.dir == "" {
		// Short base: Unix socket paths are limited to about 100 bytes.
		base := os.Getenv("TMPDIR")
		if base == "" || len(base) > 40 {
			base = "/tmp"
		}
		h.dir, err = os.MkdirTemp(base, "tailnet-")
		if err != nil {
			return nil, err
		}
		h.removeDir = !c.keep
	} else {
		if err := os.MkdirAll(c.dir, 0o700); err != nil {
			return nil, err
		}
		h.dir, _ = filepath.Abs(c.dir)
	}

	// Trap proxy: tailscaled and the CLI send any HTTP(S) request for a
	// non-loopback host here, and it is refused.
	trapLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h.trapURL = "http://" + trapLn.Addr().String()
	h.trapSrv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.trapHits.Add(1)
		log.Printf("tailnet-harness: refused outbound request: %s %s", r.Method, r.Host)
		http.Error(w, "the test tailnet does not reach the internet", http.StatusForbidden)
	})}
	go h.trapSrv.Serve(trapLn)

	if h.cp, err = newControlPlane(h.logf, c.domain); err != nil {
		h.shutdown()
		return nil, err
	}
	return h, nil
}

func (h *harness) emit(v any) {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	h.out.Write(buf.Bytes())
	if f, ok := h.out.(*os.File); ok {
		f.Sync()
	}
}

func (h *harness) shutdown() {
	h.shutdownOnce.Do(func() {
		h.mu.Lock()
		nodes := make([]*tsNode, 0, len(h.nodes))
		for _, n := range h.nodes {
			nodes = append(nodes, n)
		}
		h.mu.Unlock()
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Add(1)
			go func() { defer wg.Done(); n.stop() }()
		}
		wg.Wait()
		if h.adminSrv != nil {
			h.adminSrv.Close()
		}
		if h.cp != nil {
			h.cp.close()
		}
		if h.trapSrv != nil {
			h.trapSrv.Close()
		}
		if h.removeDir && h.dir != "" {
			os.RemoveAll(h.dir)
		}
		close(h.done)
	})
}

func (h *harness) nodeList() []NodeInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []NodeInfo
	for _, name := range h.order {
		if n := h.nodes[name]; n != nil && n.nodeInfo().Name != "" {
			out = append(out, n.nodeInfo())
		}
	}
	return out
}

func (h *harness) node(name string) (NodeInfo, bool) {
	h.mu.Lock()
	n := h.nodes[name]
	h.mu.Unlock()
	if n == nil || n.nodeInfo().Name == "" {
		return NodeInfo{}, false
	}
	return n.nodeInfo(), true
}

// info is the harness-level description printed first and served at /v0/info.
func (h *harness) info() map[string]any {
	m := map[string]any{
		"control_url": h.cp.controlURL,
		"derp":        h.cp.derpAddr,
		"stun":        h.cp.stunAddr,
		"domain":      h.cp.domain,
		"dir":         h.dir,
		"tailscaled":  h.tailscaled,
		"tailscale":   h.tailscale,
		"trap_hits":   h.trapHits.Load(),
	}
	if h.adminLn != nil {
		m["admin"] = h.adminLn.Addr().String()
	}
	return m
}

// setGrants replaces the grant table and waits until every node's
// tailscaled reports, by whois, exactly the granted values for every
// capability name the harness has ever managed.
func (h *harness) setGrants(ctx context.Context, gs []Grant) error {
	if err := h.validateGrants(gs); err != nil {
		return err
	}
	h.grantMu.Lock()
	defer h.grantMu.Unlock()
	for _, g := range gs {
		for k := range g.Caps {
			h.managed[k] = true
		}
	}
	h.cp.setGrants(gs)
	return h.awaitGrants(ctx, gs)
}

func (h *harness) validateGrants(gs []Grant) error {
	for _, g := range gs {
		if err := g.validate(); err != nil {
			return err
		}
		for _, name := range []string{g.Src, g.Dst} {
			if name != "*" && !h.cp.hasSpec(name) {
				return fmt.Errorf("grant %s -> %s: no node named %q", g.Src, g.Dst, name)
			}
		}
	}
	return nil
}

func (h *harness) awaitGrants(ctx context.Context, gs []Grant) error {
	nodes := h.nodeList()
	type pair struct{ src, dst string }
	want := map[pair]map[string][]string{}
	match := func(pattern, name string) bool { return pattern == "*" || pattern == name }
	for _, g := range gs {
		for _, s := range nodes {
			for _, d := range nodes {
				if s.Name == d.Name || !match(g.Src, s.Name) || !match(g.Dst, d.Name) {
					continue
				}
				p := pair{s.Name, d.Name}
				if want[p] == nil {
					want[p] = map[string][]string{}
				}
				names := make([]string, 0, len(g.Caps))
				for k := range g.Caps {
					names = append(names, k)
				}
				slices.Sort(names)
				for _, k := range names {
					for _, v := range g.Caps[k] {
						want[p][k] = append(want[p][k], canonJSON(v))
					}
				}
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, d := range nodes {
		for _, s := range nodes {
			if s.Name == d.Name {
				continue
			}
			exp := want[pair{s.Name, d.Name}]
			err := waitFor(ctx, nil, func() error {
				got, err := whoisCapMap(ctx, d.Socket, s.IPv4)
				if err != nil {
					return err
				}
				for k := range h.managed {
					var g []string
					for _, v := range got[k] {
						g = append(g, canonJSON(v))
					}
					if !slices.Equal(g, exp[k]) {
						return fmt.Errorf("%s sees %s with %s = %v, want %v", d.Name, s.Name, k, g, exp[k])
					}
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("grants not applied: %w", err)
			}
		}
	}
	return nil
}

func canonJSON(v []byte) string {
	var x any
	if err := json.Unmarshal(v, &x); err != nil {
		return string(v)
	}
	b, _ := json.Marshal(x)
	return string(b)
}

// parseNodeFlag parses NAME=OWNER, OWNER being a login name (with '@') or
// a comma-separated list of tags.
func parseNodeFlag(s string) (nodeSpec, error) {
	name, owner, ok := strings.Cut(s, "=")
	if !ok {
		return nodeSpec{}, fmt.Errorf("--node %q: want NAME=USER@DOMAIN or NAME=tag:a[,tag:b]", s)
	}
	spec := nodeSpec{Name: name}
	if strings.HasPrefix(owner, "tag:") {
		spec.Tags = strings.Split(owner, ",")
	} else {
		spec.User = owner
	}
	return spec, spec.validate()
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

type config struct {
	Nodes  []nodeSpec `json:"nodes"`
	Grants []Grant    `json:"grants"`
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runMain(args)
	case "record":
		err = recordMain(args)
	default:
		err = fmt.Errorf("unknown command %q (want run or record)", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tailnet-harness:", err)
		os.Exit(1)
	}
}

func runMain(args []string) error {
	fs := flag.NewFlagSet("tailnet-harness run", flag.ExitOnError)
	var c commonFlags
	c.register(fs)
	var nodeFlags, grantFlags listFlag
	fs.Var(&nodeFlags, "node", "start a node: NAME=USER@DOMAIN or NAME=tag:a[,tag:b] (repeatable)")
	fs.Var(&grantFlags, "grant", `grant as JSON: {"src":"laptop","dst":"cluster","caps":{"NAME":[VALUE,...]}} (repeatable)`)
	configPath := fs.String("config", "", `JSON file {"nodes":[{"name":..,"user":..}|{"name":..,"tags":[..]}],"grants":[..]}`)
	adminAddr := fs.String("admin", "127.0.0.1:0", "listen address of the admin API (loopback only)")
	stdinEOF := fs.Bool("exit-on-stdin-eof", false, "shut down when standard input reaches EOF (the parent went away)")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	var cfg config
	if *configPath != "" {
		b, err := os.ReadFile(*configPath)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			return fmt.Errorf("%s: %w", *configPath, err)
		}
	}
	for _, s := range nodeFlags {
		spec, err := parseNodeFlag(s)
		if err != nil {
			return err
		}
		cfg.Nodes = append(cfg.Nodes, spec)
	}
	for _, s := range grantFlags {
		var g Grant
		if err := json.Unmarshal([]byte(s), &g); err != nil {
			return fmt.Errorf("--grant %q: %w", s, err)
		}
		cfg.Grants = append(cfg.Grants, g)
	}
	for _, s := range cfg.Nodes {
		if err := s.validate(); err != nil {
			return err
		}
	}

	host, _, err := net.SplitHostPort(*adminAddr)
	if err != nil {
		return fmt.Errorf("--admin: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--admin must be a loopback address, got %q", *adminAddr)
	}

	h, err := newHarness(c, os.Stdout)
	if err != nil {
		return err
	}
	defer h.shutdown()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if *stdinEOF {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			stop()
		}()
	}

	h.adminLn, err = net.Listen("tcp", *adminAddr)
	if err != nil {
		return err
	}
	h.adminSrv = &http.Server{Handler: h.adminHandler(stop)}
	go h.adminSrv.Serve(h.adminLn)
	h.emit(h.info())

	for _, spec := range cfg.Nodes {
		n, err := h.startNode(ctx, spec)
		if err != nil {
			return err
		}
		h.emit(map[string]any{"node": n.nodeInfo()})
	}
	// Also waits, with no grants, until every node knows every other one.
	if err := h.setGrants(ctx, cfg.Grants); err != nil {
		return err
	}
	h.emit(map[string]any{"ready": true, "nodes": h.nodeList(), "grants": nonNil(h.cp.getGrants())})

	<-ctx.Done()
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return ctx.Err()
}
