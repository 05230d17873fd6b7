package main

import (
	"fmt"
	"io"

	"github.com/twinbd/twinbd/config"
)

// printWarnings writes the resource file's warnings (DRBD-only keys twinbd
// ignores, keys it accepts without effect) to w, one per line, as
// "FILE:LINE:COL: warning: ...". stdout stays the verb's own output, so
// `twinbd dump` still prints a valid resource file.
func printWarnings(w io.Writer, cfg *config.Config) {
	for _, warn := range cfg.Warnings {
		fmt.Fprintln(w, warn.String())
	}
}
