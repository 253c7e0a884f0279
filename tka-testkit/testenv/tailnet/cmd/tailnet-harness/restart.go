package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
)

// Stopping and starting one node's tailscaled, for tests of what depends on
// it through an outage. The node keeps its directory (state: keys and prefs;
// socket path; log), so the daemon comes back as the same node with the same
// stable ID and addresses, logged in without `tailscale up`. Its SOCKS5 port
// changes (it listens on a free port each time).

func (h *harness) lookupNode(name string) (*tsNode, error) {
	h.mu.Lock()
	n := h.nodes[name]
	h.mu.Unlock()
	if n == nil || n.nodeInfo().Name == "" {
		return nil, fmt.Errorf("no node named %q", name)
	}
	return n, nil
}

// running reports whether the node's tailscaled has been started and has not
// exited.
func (n *tsNode) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// stopDaemon stops the node's tailscaled (SIGTERM, SIGKILL after 5 s) and
// returns once it has exited; its LocalAPI and SOCKS5 proxy stop answering.
// Stopping a stopped node is a no-op.
func (h *harness) stopDaemon(name string) (NodeInfo, error) {
	n, err := h.lookupNode(name)
	if err != nil {
		return NodeInfo{}, err
	}
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	if n.running() {
		n.stop()
	}
	n.mu.Lock()
	n.info.PID = 0
	n.mu.Unlock()
	return n.nodeInfo(), nil
}

// startDaemon starts a stopped node's tailscaled again from its state and
// returns once it is Running with its old addresses and every grant is in
// effect again. Starting a running node is a no-op.
func (h *harness) startDaemon(ctx context.Context, name string) (NodeInfo, error) {
	n, err := h.lookupNode(name)
	if err != nil {
		return NodeInfo{}, err
	}
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	if n.running() {
		return n.nodeInfo(), nil
	}
	before := n.nodeInfo()
	lf, err := os.OpenFile(n.logPath, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return NodeInfo{}, err
	}
	if err := h.spawnDaemon(n, lf); err != nil {
		return NodeInfo{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, h.nodeTimeout)
	defer cancel()
	socks, err := n.awaitDaemon(ctx)
	if err != nil {
		n.stop()
		return NodeInfo{}, err
	}
	if err := waitFor(ctx, n.exited, func() error {
		code, _, body, err := localAPI(ctx, n.sock, "/localapi/v0/status?peers=false")
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("status %d", code)
		}
		var st statusJSON
		if err := json.Unmarshal(body, &st); err != nil {
			return err
		}
		if st.BackendState != "Running" || st.Self == nil {
			return fmt.Errorf("backend state %q", st.BackendState)
		}
		if st.Self.ID != before.StableID || !slices.Equal(st.Self.TailscaleIPs, before.Addresses) {
			return fmt.Errorf("came back as %s %v, was %s %v", st.Self.ID, st.Self.TailscaleIPs, before.StableID, before.Addresses)
		}
		return nil
	}); err != nil {
		n.stop()
		return NodeInfo{}, fmt.Errorf("%s did not come back: %w; see %s", name, err, n.logPath)
	}
	n.mu.Lock()
	n.info.SOCKS5 = socks
	if _, port, err := net.SplitHostPort(socks); err == nil {
		n.info.SOCKS5Port, _ = strconv.Atoi(port)
	}
	n.info.PID = n.cmd.Process.Pid
	n.mu.Unlock()
	// The node's peers learn it is back from the control server; wait until
	// every grant is visible in whois again, as after any change.
	h.grantMu.Lock()
	err = h.awaitGrants(ctx, h.cp.getGrants())
	h.grantMu.Unlock()
	if err != nil {
		return NodeInfo{}, err
	}
	return n.nodeInfo(), nil
}
