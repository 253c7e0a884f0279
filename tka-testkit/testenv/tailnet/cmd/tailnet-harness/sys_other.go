//go:build !linux

package main

import "syscall"

// childSysProcAttr: elsewhere, TS_PARENT_DEATH_FD alone ends the children.
func childSysProcAttr() *syscall.SysProcAttr { return nil }
