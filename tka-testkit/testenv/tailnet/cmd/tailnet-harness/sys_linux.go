//go:build linux

package main

import "syscall"

// childSysProcAttr makes the kernel kill a tailscaled child when the
// harness dies, whatever the cause.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
