//go:build tools

// Package tools pins the commands that build.sh compiles from this module:
// go build k8s.io/kubernetes/cmd/kube-apiserver (and the others below).
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
