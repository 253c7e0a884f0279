package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
)

// adminHandler serves the admin API (JSON in, JSON out; errors are
// {"error": "..."} with a 4xx or 5xx status).
//
//	GET    /v0/info            harness addresses and directories
//	GET    /v0/nodes           [NodeInfo]
//	GET    /v0/nodes/{name}    NodeInfo
//	POST   /v0/nodes           nodeSpec -> 201 NodeInfo, once the node is Running
//	POST   /v0/nodes/{name}/stop   stops its tailscaled (state kept) -> 200 NodeInfo, once exited
//	POST   /v0/nodes/{name}/start  starts it again -> 200 NodeInfo, once Running with grants in effect
//	GET    /v0/grants          [Grant]
//	PUT    /v0/grants          [Grant] replaces the table -> 200 [Grant], once applied
//	POST   /v0/grants          Grant appended -> 200 [Grant], once applied
//	DELETE /v0/grants          empties the table -> 200 [], once applied
//	POST   /v0/shutdown        202, then the harness stops its nodes and exits
func (h *harness) adminHandler(stop func()) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v0/info", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, h.info())
	})
	mux.HandleFunc("GET /v0/nodes", func(w http.ResponseWriter, r *http.Request) {
		nodes := h.nodeList()
		if nodes == nil {
			nodes = []NodeInfo{}
		}
		writeJSON(w, 200, nodes)
	})
	mux.HandleFunc("GET /v0/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		n, ok := h.node(r.PathValue("name"))
		if !ok {
			writeErr(w, 404, fmt.Errorf("no node named %q", r.PathValue("name")))
			return
		}
		writeJSON(w, 200, n)
	})
	mux.HandleFunc("POST /v0/nodes", func(w http.ResponseWriter, r *http.Request) {
		var spec nodeSpec
		if err := readJSON(r, &spec); err != nil {
			writeErr(w, 400, err)
			return
		}
		if err := spec.validate(); err != nil {
			writeErr(w, 400, err)
			return
		}
		if h.cp.hasSpec(spec.Name) {
			writeErr(w, 409, fmt.Errorf("node %q already exists", spec.Name))
			return
		}
		n, err := h.startNode(r.Context(), spec)
		if err != nil {
			writeErr(w, 500, err)
			return
		}
		// Re-check the grants that name this node (or "*").
		h.grantMu.Lock()
		err = h.awaitGrants(r.Context(), h.cp.getGrants())
		h.grantMu.Unlock()
		if err != nil {
			writeErr(w, 500, err)
			return
		}
		h.emit(map[string]any{"node": n.nodeInfo()})
		writeJSON(w, 201, n.nodeInfo())
	})
	mux.HandleFunc("POST /v0/nodes/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		n, err := h.stopDaemon(r.PathValue("name"))
		if err != nil {
			writeErr(w, 404, err)
			return
		}
		writeJSON(w, 200, n)
	})
	mux.HandleFunc("POST /v0/nodes/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		if _, err := h.lookupNode(r.PathValue("name")); err != nil {
			writeErr(w, 404, err)
			return
		}
		n, err := h.startDaemon(r.Context(), r.PathValue("name"))
		if err != nil {
			writeErr(w, 500, err)
			return
		}
		writeJSON(w, 200, n)
	})
	mux.HandleFunc("GET /v0/grants", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, nonNil(h.cp.getGrants()))
	})
	mux.HandleFunc("PUT /v0/grants", func(w http.ResponseWriter, r *http.Request) {
		var gs []Grant
		if err := readJSON(r, &gs); err != nil {
			writeErr(w, 400, err)
			return
		}
		h.replyGrants(w, r, gs)
	})
	mux.HandleFunc("POST /v0/grants", func(w http.ResponseWriter, r *http.Request) {
		var g Grant
		if err := readJSON(r, &g); err != nil {
			writeErr(w, 400, err)
			return
		}
		h.replyGrants(w, r, append(h.cp.getGrants(), g))
	})
	mux.HandleFunc("DELETE /v0/grants", func(w http.ResponseWriter, r *http.Request) {
		h.replyGrants(w, r, nil)
	})
	mux.HandleFunc("POST /v0/shutdown", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 202, map[string]any{"shutting_down": true})
		stop()
	})
	return mux
}

func (h *harness) replyGrants(w http.ResponseWriter, r *http.Request, gs []Grant) {
	if err := h.validateGrants(gs); err != nil {
		writeErr(w, 400, err)
		return
	}
	if err := h.setGrants(r.Context(), gs); err != nil {
		writeErr(w, 500, err)
		return
	}
	writeJSON(w, 200, nonNil(h.cp.getGrants()))
}

func nonNil(gs []Grant) []Grant {
	if gs == nil {
		return []Grant{}
	}
	return slices.Clone(gs)
}

func readJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("bad JSON body: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
