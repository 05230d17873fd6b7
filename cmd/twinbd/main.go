// Command twinbd is DRBD in userspace: the node daemon, the drbdadm-style
// verbs that talk to it, the witness and the benchmark harness. Commands
// only parse flags and call library code.
package main

import (
	"fmt"
	"os"
)

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "twinbd:", err)
		os.Exit(exitCode(err))
	}
}
