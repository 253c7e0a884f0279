//go:build tools

// Package tools pins the commands that build.sh compiles from this module.
package tools

import (
	_ "tailscale.com/cmd/tailscale"
	_ "tailscale.com/cmd/tailscaled"
)
