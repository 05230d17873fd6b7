# twinbd — see README.md. `make demo` runs a pair on loopback; `make test` passes the tests.
GO      ?= go
export PATH := /usr/local/go/bin:$(PATH)
BIN     := bin/twinbd
PKGS    := ./...
FUZZTIME ?= 30s

.PHONY: all build test test-short lint bench demo fuzz deps clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/twinbd

deps:
	@scripts/deps.sh

# Unit, simulation, process and real-client tests. Installs missing Debian packages first.
test: deps build
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 25m $(PKGS)

test-short: build
	$(GO) test -short -count=1 $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Side-by-side benchmarks (twinbd vs nbdkit, fio nbd engine). Not a test: numbers, not pass/fail.
bench: deps build
	scripts/bench.sh
	scripts/bench-repl.sh
	scripts/bench-failover.sh

# A replicated pair on loopback: two daemons, initial sync, writes through NBD, verify (nothing external).
demo: build
	scripts/demo.sh

# The kernel nbd-client in a qemu VM against a real pair (e2e/README.md); every scenario.
.PHONY: e2e
e2e: deps
	TWINBD_E2E=full $(GO) test ./e2e -run . -v -count=1 -timeout 30m

# Every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t"; $(GO) test $$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME); \
	  done; \
	done

clean:
	rm -rf bin
