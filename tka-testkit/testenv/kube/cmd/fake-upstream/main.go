// Command fake-upstream is a small Kubernetes API server for end-to-end tests of clients and
// proxies that carry exec, attach and port-forward upgrades: the test environment runs no
// kubelet, so the real kube-apiserver cannot answer those.
//
// It serves, on a loopback address, what kubectl needs for `kubectl exec`, `kubectl attach`
// and `kubectl port-forward`: discovery (/api, /api/v1, /apis, /version), GET of any pod
// (Running, one container "main" with port 80) and the pods' exec, attach and portforward
// subresources. Those are handled the way kube-apiserver and the kubelet handle them, with the
// same Kubernetes packages: WebSocket requests (v5.channel.k8s.io for exec and attach,
// SPDY/3.1+portforward.k8s.io tunnelled over WebSocket for port-forward) go through
// k8s.io/apiserver's StreamTranslatorHandler and TunnelingHandler, and SPDY requests through
// k8s.io/apimachinery's UpgradeAwareHandler, to an in-process "kubelet" on a second loopback
// listener that serves them with k8s.io/cri-streaming (the kubelet's streaming server).
//
// The "container": exec of `cat` copies stdin to stdout and exits 0 on EOF; `echo ARGS…`
// prints its arguments; `exit N` exits with N; `sleep N` waits N seconds (a cut stream does not
// end it: the kubelet side's request context lives as long as its handler); anything else
// exits 127. attach copies stdin to stdout. A forwarded port echoes every byte back.
//
// Every request to the API listener is appended to the record file as one JSON line when it
// arrives (`{"seq":…,"method":…,"path":…,"query":…,"host":…,"headers":{…}}`) and one when its
// handler returns (`{"seq":…,"done":true,"status":…,"hijacked":…}`), so a test can assert what
// reached the API server, including the Authorization header. stdout carries one line only,
// `{"url":…,"ca":…,"record":…}`, printed once the server accepts connections; credentials are
// never printed.
//
// Usage:
//
//	fake-upstream --dir DIR [--listen 127.0.0.1:0] [--plain] [--exit-on-stdin-eof]
//
// With TLS (the default) it makes a CA and a serving certificate for 127.0.0.1, ::1 and
// localhost, and writes the CA to DIR/ca.crt. The record is DIR/requests.jsonl.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/apimachinery/pkg/version"
	translator "k8s.io/apiserver/pkg/util/proxy"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/streaming/pkg/httpstream/wsstream"
)

const (
	containerName         = "main"
	containerPort         = 80
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "API address (loopback only)")
	dir := flag.String("dir", "", "directory for ca.crt and requests.jsonl (required)")
	plain := flag.Bool("plain", false, "serve plain HTTP instead of HTTPS")
	exitOnEOF := flag.Bool("exit-on-stdin-eof", false, "exit when stdin reaches EOF (the parent died)")
	flag.Parse()
	if err := run(*listen, *dir, *plain, *exitOnEOF); err != nil {
		fmt.Fprintf(os.Stderr, "fake-upstream: %v\n", err)
		os.Exit(1)
	}
}

func run(listen, dir string, plain, exitOnEOF bool) error {
	if dir == "" {
		return errors.New("--dir is required")
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen %q: only loopback addresses are allowed", listen)
	}
	if exitOnEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			os.Exit(0)
		}()
	}

	recordPath := filepath.Join(dir, "requests.jsonl")
	rec, err := newRecorder(recordPath)
	if err != nil {
		return err
	}

	// The in-process kubelet: plain HTTP on its own loopback port, reached only by this process.
	kubeletLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening for the kubelet side: %w", err)
	}
	go func() {
		srv := &http.Server{Handler: kubeletHandler(), ReadHeaderTimeout: 30 * time.Second}
		_ = srv.Serve(kubeletLn)
	}()
	kubelet := &url.URL{Scheme: "http", Host: kubeletLn.Addr().String()}

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", listen, err)
	}
	api := &apiServer{kubelet: kubelet, addr: ln.Addr().String()}
	srv := &http.Server{Handler: rec.wrap(api.handler()), ReadHeaderTimeout: 30 * time.Second}

	scheme, caPath := "http", ""
	if !plain {
		caPath = filepath.Join(dir, "ca.crt")
		cert, err := makeCertificates(caPath)
		if err != nil {
			return err
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		scheme = "https"
	}
	ready, err := json.Marshal(map[string]string{
		"url":    fmt.Sprintf("%s://%s", scheme, ln.Addr().String()),
		"ca":     caPath,
		"record": recordPath,
	})
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		if plain {
			errc <- srv.Serve(ln)
		} else {
			// Offers HTTP/2 and HTTP/1.1, as kube-apiserver does.
			errc <- srv.ServeTLS(ln, "", "")
		}
	}()
	fmt.Println(string(ready))
	return <-errc
}

// makeCertificates makes a CA (written to caPath) and a serving certificate it signs.
func makeCertificates(caPath string) (tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "fake-upstream-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "fake-upstream"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, caCert, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(caPath, caPEM, 0o644); err != nil {
		return tls.Certificate{}, fmt.Errorf("writing %s: %w", caPath, err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}, nil
}

// recorder appends one JSON line per request event to a file.
type recorder struct {
	mu   sync.Mutex
	file *os.File
	seq  uint64
}

func newRecorder(path string) (*recorder, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the record %s: %w", path, err)
	}
	return &recorder{file: f}, nil
}

func (r *recorder) write(v map[string]any) {
	line, err := json.Marshal(v)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.file.Write(append(line, '\n'))
}

func (r *recorder) next() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	return r.seq
}

func (r *recorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		seq := r.next()
		r.write(map[string]any{
			"seq":     seq,
			"method":  req.Method,
			"path":    req.URL.Path,
			"query":   req.URL.RawQuery,
			"host":    req.Host,
			"proto":   req.Proto,
			"headers": req.Header,
		})
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, req)
		r.write(map[string]any{
			"seq":      seq,
			"done":     true,
			"status":   sw.status,
			"hijacked": sw.hijacked,
		})
	})
}

// statusWriter remembers the status and whether the connection was hijacked (upgrades).
type statusWriter struct {
	http.ResponseWriter
	status   int
	hijacked bool
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be hijacked (HTTP/2?)")
	}
	conn, rw, err := h.Hijack()
	if err == nil {
		w.hijacked = true
	}
	return conn, rw, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// apiServer answers the API requests kubectl makes.
type apiServer struct {
	kubelet *url.URL
	addr    string
}

func (s *apiServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, version.Info{
			Major: "1", Minor: "36", GitVersion: "v1.36.3-fake-upstream", Platform: "linux/amd64",
		})
	})
	mux.HandleFunc("GET /healthz", okText)
	mux.HandleFunc("GET /readyz", okText)
	mux.HandleFunc("GET /livez", okText)
	mux.HandleFunc("GET /api", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, metav1.APIVersions{
			TypeMeta: metav1.TypeMeta{Kind: "APIVersions"},
			Versions: []string{"v1"},
			ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{
				{ClientCIDR: "0.0.0.0/0", ServerAddress: s.addr},
			},
		})
	})
	mux.HandleFunc("GET /apis", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, metav1.APIGroupList{
			TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
			Groups:   []metav1.APIGroup{},
		})
	})
	mux.HandleFunc("GET /api/v1", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, metav1.APIResourceList{
			TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
			GroupVersion: "v1",
			APIResources: []metav1.APIResource{
				{Name: "pods", SingularName: "pod", Namespaced: true, Kind: "Pod", Verbs: []string{"get"}, ShortNames: []string{"po"}},
				{Name: "pods/attach", Namespaced: true, Kind: "PodAttachOptions", Verbs: []string{"create", "get"}},
				{Name: "pods/exec", Namespaced: true, Kind: "PodExecOptions", Verbs: []string{"create", "get"}},
				{Name: "pods/portforward", Namespaced: true, Kind: "PodPortForwardOptions", Verbs: []string{"create", "get"}},
			},
		})
	})
	mux.HandleFunc("GET /api/v1/namespaces/{ns}/pods/{name}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, pod(r.PathValue("ns"), r.PathValue("name")))
	})
	for _, sub := range []string{"exec", "attach", "portforward"} {
		h := s.subresource(sub)
		mux.HandleFunc("GET /api/v1/namespaces/{ns}/pods/{name}/"+sub, h)
		mux.HandleFunc("POST /api/v1/namespaces/{ns}/pods/{name}/"+sub, h)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound,
			fmt.Sprintf("fake-upstream serves no %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// subresource proxies an exec, attach or portforward request to the in-process kubelet the way
// kube-apiserver does (pkg/registry/core/pod/rest/subresources.go): SPDY through the
// UpgradeAwareHandler, WebSocket through the stream translator or the SPDY tunnel.
func (s *apiServer) subresource(sub string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		location := *s.kubelet
		location.Path = r.URL.Path
		kq := url.Values{}
		var opts translator.Options
		if sub != "portforward" {
			if c := q.Get("container"); c != "" && c != containerName {
				writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest,
					fmt.Sprintf("container %s is not valid for pod %s", c, r.PathValue("name")))
				return
			}
			opts = translator.Options{
				Stdin: isTrue(q.Get("stdin")), Stdout: isTrue(q.Get("stdout")),
				Stderr: isTrue(q.Get("stderr")), Tty: isTrue(q.Get("tty")),
			}
			for name, set := range map[string]bool{
				remotecommand.ExecStdinParam: opts.Stdin, remotecommand.ExecStdoutParam: opts.Stdout,
				remotecommand.ExecStderrParam: opts.Stderr, remotecommand.ExecTTYParam: opts.Tty,
			} {
				if set {
					kq.Set(name, "1")
				}
			}
			if sub == "exec" {
				command := q["command"]
				if len(command) == 0 {
					writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "you must specify a command")
					return
				}
				kq["command"] = command
			}
		} else {
			kq["port"] = q["ports"]
		}
		location.RawQuery = kq.Encode()
		upgrade := proxy.NewUpgradeAwareHandler(&location, nil, false, true, errorResponder{})
		var h http.Handler = upgrade
		if sub == "portforward" {
			h = translator.NewTranslatingHandler(upgrade, translator.NewTunnelingHandler(upgrade),
				wsstream.IsWebSocketRequestWithTunnelingProtocol)
		} else {
			h = translator.NewTranslatingHandler(upgrade, translator.NewStreamTranslatorHandler(&location, nil, 0, opts),
				wsstream.IsWebSocketRequestWithStreamCloseProtocol)
		}
		h.ServeHTTP(w, r)
	}
}

func isTrue(v string) bool {
	b, err := strconv.ParseBool(v)
	return err == nil && b
}

type errorResponder struct{}

func (errorResponder) Error(w http.ResponseWriter, _ *http.Request, err error) {
	writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
}

func pod(namespace, name string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: namespace, UID: "00000000-0000-0000-0000-00000000f00d",
			CreationTimestamp: metav1.NewTime(time.Unix(1700000000, 0)),
		},
		Spec: corev1.PodSpec{
			NodeName: "fake-node",
			Containers: []corev1.Container{{
				Name: containerName, Image: "fake-upstream/echo",
				Ports: []corev1.ContainerPort{{ContainerPort: containerPort, Protocol: corev1.ProtocolTCP}},
			}},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{
				Name: containerName, Ready: true, Image: "fake-upstream/echo",
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
			}},
		},
	}
}

func okText(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, message string) {
	writeJSON(w, code, metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: message, Reason: reason, Code: int32(code),
	})
}

// kubeletHandler serves exec, attach and portforward with the kubelet's streaming server code.
func kubeletHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/namespaces/{ns}/pods/{name}/exec", func(w http.ResponseWriter, r *http.Request) {
		opts, err := remotecommand.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		remotecommand.ServeExec(w, r, container{}, r.PathValue("name"), "", containerName, r.URL.Query()["command"],
			opts, streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
	})
	mux.HandleFunc("/api/v1/namespaces/{ns}/pods/{name}/attach", func(w http.ResponseWriter, r *http.Request) {
		opts, err := remotecommand.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		remotecommand.ServeAttach(w, r, container{}, r.PathValue("name"), "", containerName,
			opts, streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
	})
	mux.HandleFunc("/api/v1/namespaces/{ns}/pods/{name}/portforward", func(w http.ResponseWriter, r *http.Request) {
		portforward.ServePortForward(w, r, container{}, r.PathValue("name"), "", &portforward.V4Options{},
			streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
	})
	return mux
}

// container is the one fake container: the commands above, and an echo on every port.
type container struct{}

func (container) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser,
	_ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	switch {
	case len(cmd) == 1 && cmd[0] == "cat":
		if in == nil || out == nil {
			return nil
		}
		_, err := io.Copy(out, in)
		return err
	case len(cmd) >= 1 && cmd[0] == "echo":
		if out != nil {
			_, err := io.WriteString(out, strings.Join(cmd[1:], " ")+"\n")
			return err
		}
		return nil
	case len(cmd) == 2 && cmd[0] == "exit":
		code, err := strconv.Atoi(cmd[1])
		if err != nil {
			return utilexec.CodeExitError{Err: fmt.Errorf("exit: %q is not a number", cmd[1]), Code: 2}
		}
		if code == 0 {
			return nil
		}
		return utilexec.CodeExitError{Err: fmt.Errorf("exit %d", code), Code: code}
	case len(cmd) == 2 && cmd[0] == "sleep":
		seconds, err := strconv.Atoi(cmd[1])
		if err != nil {
			return utilexec.CodeExitError{Err: fmt.Errorf("sleep: %q is not a number", cmd[1]), Code: 2}
		}
		select {
		case <-time.After(time.Duration(seconds) * time.Second):
		case <-ctx.Done():
		}
		return nil
	default:
		if errOut != nil {
			_, _ = fmt.Fprintf(errOut, "fake-upstream: %q: command not found (it knows cat, echo, exit N, sleep N)\n", cmd)
		}
		return utilexec.CodeExitError{Err: errors.New("command not found"), Code: 127}
	}
}

func (container) AttachContainer(_ context.Context, _, _, _ string, in io.Reader, out, _ io.WriteCloser,
	_ bool, _ <-chan remotecommand.TerminalSize) error {
	if in == nil || out == nil {
		return nil
	}
	_, err := io.Copy(out, in)
	return err
}

func (container) PortForward(_ context.Context, _, _ string, _ int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	_, err := io.Copy(stream, stream)
	return err
}
