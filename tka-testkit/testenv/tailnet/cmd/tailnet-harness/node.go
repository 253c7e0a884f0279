package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// NodeInfo is what the admin API and stdout report about a running node.
type NodeInfo struct {
	Name       string   `json:"name"`
	User       string   `json:"user,omitempty"`
	Tags       []string `json:"tags,omitempty"`
	DNSName    string   `json:"dns_name"`
	IPv4       string   `json:"ipv4"`
	IPv6       string   `json:"ipv6"`
	Addresses  []string `json:"addresses"`
	NodeID     int64    `json:"node_id"`
	StableID   string   `json:"stable_id"`
	NodeKey    string   `json:"node_key"`
	Socket     string   `json:"socket"`
	SOCKS5     string   `json:"socks5"`
	SOCKS5Port int      `json:"socks5_port"`
	Dir        string   `json:"dir"`
	Log        string   `json:"log"`
	PID        int      `json:"pid"`
}

type tsNode struct {
	spec    nodeSpec
	dir     string
	sock    string
	logPath string
	cmd     *exec.Cmd
	deathW  *os.File // closing it (or our death) tells tailscaled to exit
	exited  chan struct{}
	logFile *os.File

	socksOnce sync.Once
	socksCh   chan string

	mu   sync.Mutex
	info NodeInfo

	lifeMu sync.Mutex // serialises stopDaemon and startDaemon
}

// lineWatcher passes output to w and calls onLine for each complete line.
type lineWatcher struct {
	w      io.Writer
	onLine func(string)
	mu     sync.Mutex
	buf    []byte
}

func (lw *lineWatcher) Write(p []byte) (int, error) {
	lw.mu.Lock()
	lw.buf = append(lw.buf, p...)
	for {
		i := bytes.IndexByte(lw.buf, '\n')
		if i < 0 {
			break
		}
		line := string(lw.buf[:i])
		lw.buf = lw.buf[i+1:]
		lw.onLine(line)
	}
	lw.mu.Unlock()
	return lw.w.Write(p)
}

// daemonEnv keeps tailscaled on loopback: no log uploads, no port mapping,
// no direct UDP (all peer traffic goes through the loopback DERP), and any
// HTTP(S) request to a non-loopback host goes to a refusing trap proxy.
func (h *harness) daemonEnv(n *tsNode) []string {
	env := os.Environ()
	env = append(env,
		"TS_LOGS_DIR="+n.dir,
		"TS_NO_LOGS_NO_SUPPORT=true",
		"TS_NETCHECK_GENERATE_204_URL="+h.cp.controlURL+"/generate_204",
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1",
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1",
		"TS_DISABLE_PORTMAPPER=1",
		"TS_DEBUG_NEVER_DIRECT_UDP=1",
		"TS_DEBUG_OMIT_LOCAL_ADDRS=1",
		"HTTP_PROXY="+h.trapURL,
		"HTTPS_PROXY="+h.trapURL,
		"http_proxy="+h.trapURL,
		"https_proxy="+h.trapURL,
		"NO_PROXY=",
		"no_proxy=",
	)
	return env
}

func (h *harness) startNode(ctx context.Context, spec nodeSpec) (*tsNode, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if err := h.cp.addSpec(spec); err != nil {
		return nil, err
	}
	n := &tsNode{
		spec:    spec,
		dir:     filepath.Join(h.dir, spec.Name),
		exited:  make(chan struct{}),
		socksCh: make(chan string, 1),
	}
	n.sock = filepath.Join(n.dir, "tailscaled.sock")
	n.logPath = filepath.Join(n.dir, "tailscaled.log")
	ok := false
	defer func() {
		if !ok {
			n.stop()
			h.cp.removeSpec(spec.Name)
		}
	}()
	if err := os.MkdirAll(filepath.Join(n.dir, "state"), 0o700); err != nil {
		return nil, err
	}
	if len(n.sock) > 100 {
		return nil, fmt.Errorf("socket path %q is too long for a Unix socket; use a shorter --dir", n.sock)
	}
	lf, err := os.Create(n.logPath)
	if err != nil {
		return nil, err
	}
	if err := h.spawnDaemon(n, lf); err != nil {
		return nil, err
	}

	h.mu.Lock()
	h.nodes[spec.Name] = n
	h.order = append(h.order, spec.Name)
	h.mu.Unlock()
	defer func() {
		if !ok {
			h.mu.Lock()
			delete(h.nodes, spec.Name)
			for i, name := range h.order {
				if name == spec.Name {
					h.order = append(h.order[:i], h.order[i+1:]...)
					break
				}
			}
			h.mu.Unlock()
		}
	}()

	ctx, cancel := context.WithTimeout(ctx, h.nodeTimeout)
	defer cancel()

	socks, err := n.awaitDaemon(ctx)
	if err != nil {
		return nil, err
	}

	args := []string{
		"--socket=" + n.sock, "up",
		"--login-server=" + h.cp.controlURL,
		"--hostname=" + spec.Name,
		"--reset",
		"--timeout=" + h.nodeTimeout.String(),
	}
	if len(spec.Tags) > 0 {
		args = append(args, "--advertise-tags="+strings.Join(spec.Tags, ","))
	}
	up := exec.CommandContext(ctx, h.tailscale, args...)
	up.Env = h.daemonEnv(n)
	if out, err := up.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tailscale up for %s: %v: %s", spec.Name, err, strings.TrimSpace(string(out)))
	}

	var st statusJSON
	if err := waitFor(ctx, n.exited, func() error {
		code, _, body, err := localAPI(ctx, n.sock, "/localapi/v0/status?peers=false")
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("status %d", code)
		}
		st = statusJSON{}
		if err := json.Unmarshal(body, &st); err != nil {
			return err
		}
		if st.BackendState != "Running" || st.Self == nil || len(st.Self.TailscaleIPs) == 0 {
			return fmt.Errorf("backend state %q", st.BackendState)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("%s did not reach Running: %w; see %s", spec.Name, err, n.logPath)
	}

	info := NodeInfo{
		Name:     spec.Name,
		User:     spec.User,
		Tags:     spec.Tags,
		DNSName:  st.Self.DNSName,
		StableID: st.Self.ID,
		NodeKey:  st.Self.PublicKey,
		Socket:   n.sock,
		SOCKS5:   socks,
		Dir:      n.dir,
		Log:      n.logPath,
		PID:      n.cmd.Process.Pid,
	}
	for _, ip := range st.Self.TailscaleIPs {
		info.Addresses = append(info.Addresses, ip)
		if strings.Contains(ip, ":") {
			info.IPv6 = ip
		} else {
			info.IPv4 = ip
		}
	}
	if _, port, err := net.SplitHostPort(socks); err == nil {
		info.SOCKS5Port, _ = strconv.Atoi(port)
	}
	if cn := h.cp.nodeByHostname(spec.Name); cn != nil {
		info.NodeID = int64(cn.ID)
	}
	n.mu.Lock()
	n.info = info
	n.mu.Unlock()
	ok = true
	return n, nil
}

// spawnDaemon starts the node's tailscaled (userspace networking, its state
// directory and socket, a SOCKS5 proxy on a free port), logging to lf. Each
// start gets its own exit channel and SOCKS5 announcement; the state directory
// is kept across starts, so a restarted daemon is the same node.
func (h *harness) spawnDaemon(n *tsNode, lf *os.File) error {
	n.logFile = lf
	n.exited = make(chan struct{})
	n.socksCh = make(chan string, 1)
	n.socksOnce = sync.Once{}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	n.deathW = pw
	cmd := exec.Command(h.tailscaled,
		"--tun=userspace-networking",
		"--statedir="+filepath.Join(n.dir, "state"),
		"--socket="+n.sock,
		"--socks5-server=127.0.0.1:0",
		"--port=0",
		"--no-logs-no-support",
	)
	cmd.Env = append(h.daemonEnv(n), "TS_PARENT_DEATH_FD=3")
	cmd.ExtraFiles = []*os.File{pr}
	cmd.Stdout = lf
	socksCh, socksOnce := n.socksCh, &n.socksOnce
	cmd.Stderr = &lineWatcher{w: lf, onLine: func(line string) {
		const marker = "SOCKS5 listening on "
		if i := strings.Index(line, marker); i >= 0 {
			addr := strings.TrimSpace(line[i+len(marker):])
			socksOnce.Do(func() { socksCh <- addr })
		}
	}}
	cmd.SysProcAttr = childSysProcAttr()
	if err := cmd.Start(); err != nil {
		pr.Close()
		return fmt.Errorf("starting tailscaled: %w", err)
	}
	pr.Close()
	n.cmd = cmd
	exited := n.exited
	go func() {
		cmd.Wait()
		close(exited)
	}()
	return nil
}

// awaitDaemon waits until the daemon started by spawnDaemon announces its
// SOCKS5 address and answers on its LocalAPI; it returns that address.
func (n *tsNode) awaitDaemon(ctx context.Context) (string, error) {
	var socks string
	select {
	case socks = <-n.socksCh:
	case <-n.exited:
		return "", fmt.Errorf("tailscaled for %s exited early; see %s", n.spec.Name, n.logPath)
	case <-ctx.Done():
		return "", fmt.Errorf("tailscaled for %s did not start its SOCKS5 server; see %s", n.spec.Name, n.logPath)
	}
	if err := waitFor(ctx, n.exited, func() error {
		_, _, _, err := localAPI(ctx, n.sock, "/localapi/v0/status?peers=false")
		return err
	}); err != nil {
		return "", fmt.Errorf("LocalAPI of %s: %w; see %s", n.spec.Name, err, n.logPath)
	}
	return socks, nil
}

func (n *tsNode) nodeInfo() NodeInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.info
}

// stop asks tailscaled to exit (SIGTERM) and kills it if it lingers.
func (n *tsNode) stop() {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(5 * time.Second):
			n.cmd.Process.Kill()
			<-n.exited
		}
	}
	if n.deathW != nil {
		n.deathW.Close()
	}
	if n.logFile != nil {
		n.logFile.Close()
	}
}

type statusJSON struct {
	BackendState string `json:"BackendState"`
	Self         *struct {
		ID           string   `json:"ID"`
		PublicKey    string   `json:"PublicKey"`
		DNSName      string   `json:"DNSName"`
		TailscaleIPs []string `json:"TailscaleIPs"`
	} `json:"Self"`
}

// waitFor retries f until it succeeds, ctx ends or the process exits.
func waitFor(ctx context.Context, exited <-chan struct{}, f func() error) error {
	var last error
	for {
		if last = f(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-exited:
			return fmt.Errorf("process exited (last error: %v)", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// localAPI makes one GET request to tailscaled's LocalAPI over its Unix
// socket and returns the raw answer.
func localAPI(ctx context.Context, sock, pathAndQuery string) (code int, ctype string, body []byte, err error) {
	return localAPIHost(ctx, sock, pathAndQuery, "local-tailscaled.sock")
}

func localAPIHost(ctx context.Context, sock, pathAndQuery, host string) (code int, ctype string, body []byte, err error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://local-tailscaled.sock"+pathAndQuery, nil)
	if err != nil {
		return 0, "", nil, err
	}
	req.Host = host
	res, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer res.Body.Close()
	body, err = io.ReadAll(res.Body)
	return res.StatusCode, res.Header.Get("Content-Type"), body, err
}

// whoisCapMap asks dst's tailscaled who addr is and returns the CapMap.
func whoisCapMap(ctx context.Context, sock, addr string) (map[string][]json.RawMessage, error) {
	code, _, body, err := localAPI(ctx, sock, "/localapi/v0/whois?addr="+url.QueryEscape(addr))
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("whois %s: %d %s", addr, code, strings.TrimSpace(string(body)))
	}
	var res struct {
		CapMap map[string][]json.RawMessage
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return nil, err
	}
	return res.CapMap, nil
}

// firstLine returns the first line of r, for short error messages.
func firstLine(b []byte) string {
	s := bufio.NewScanner(bytes.NewReader(b))
	if s.Scan() {
		return s.Text()
	}
	return ""
}
