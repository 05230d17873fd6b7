# twinbd — see README.md. `make demo` runs a pair on loopback; `make test` passes the tests.
GO      ?= go
export PATH := /usr/local/go/bin:$(PATH)
BIN     := bin/twinbd
PKGS    := ./...
FUZZTIME ?= 30s

.PHONY: all build test test-short lint bench demo fuzz deps clean install

all: build

# A static binary (no cgo: the kernel attach uses ioctls through x/sys).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/twinbd

# Binary, OCF agent, systemd units, example resource file, man pages and
# shell completion under DESTDIR (default /) and PREFIX (default /usr).
PREFIX  ?= /usr
DESTDIR ?=
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/twinbd
	install -D -m 0755 ocf/twinbd $(DESTDIR)$(PREFIX)/lib/ocf/resource.d/twinbd/twinbd
	install -D -m 0644 systemd/twinbd.service $(DESTDIR)/lib/systemd/system/twinbd.service
	install -D -m 0644 systemd/twinbd@.service $(DESTDIR)/lib/systemd/system/twinbd@.service
	install -D -m 0644 systemd/twinbd-witness.service $(DESTDIR)/lib/systemd/system/twinbd-witness.service
	install -D -m 0644 contrib/twinbd.conf.example $(DESTDIR)/etc/twinbd/twinbd.conf.example
	install -D -m 0644 contrib/prometheus/twinbd-alerts.yml $(DESTDIR)$(PREFIX)/share/twinbd/prometheus/twinbd-alerts.yml
	install -D -m 0644 contrib/grafana/twinbd-dashboard.json $(DESTDIR)$(PREFIX)/share/twinbd/grafana/twinbd-dashboard.json
	install -d $(DESTDIR)$(PREFIX)/share/man/man8 && TWINBD_NODE=NODE $(BIN) gen-man $(DESTDIR)$(PREFIX)/share/man/man8
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions
	$(BIN) completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/twinbd
	$(BIN) completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_twinbd

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

# Randomized fault injection: independent seeded scenarios for SOAK_DURATION (an hour), then a
# report (text + JSON, path printed); docs/chaos.md. SOAK_ARGS adds flags, e.g. --seed N --dir D.
SOAK_DURATION ?= 1h
.PHONY: soak
soak: build
	$(BIN) chaos soak --duration $(SOAK_DURATION) $(SOAK_ARGS)

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
