# localdns — build, test, benchmark.
#
#   make run      build and run on the embedded laptop profile (unprivileged)
#   make test     everything CI runs: vet, unit, integration, netns and e2e tests, the short lab
#   make bench    cache-hit benchmark: stock CoreDNS cache vs localdns, one run
#   make bench-mem  one million unique names through a 32 MiB cache, peak RSS
#   make lab      the full seed experiment in network namespaces (root)
#   make lab-short  its short variant (< 3 min)
#   make package  Debian packages dist/localdns_<version>_<arch>.deb (VERSION=x.y.z)

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build run test vet deps clean bench bench-mem bench-miss bench-bin lab lab-short lab-ci lab-bins

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/localdns ./cmd/localdns

run: build
	./bin/localdns run

# deps installs what the tests need on a fresh Debian machine (root).
deps:
	./.ci/deps

vet:
	$(GO) vet ./...

test: deps vet
	$(GO) test -count=1 -timeout 20m ./...
	$(MAKE) lab-ci

# Benchmarks: test/bench/README.md. The baseline gets the same build flags as localdns.
bench-bin: build
	$(GO) build -trimpath -ldflags '-s -w' -o bin/coredns-stock ./test/bench/stockcoredns
	$(GO) build -trimpath -ldflags '-s -w' -o bin/localdns-corefilerun ./test/bench/cmd/corefilerun
	$(GO) build -o bin/benchrun ./test/bench/cmd/benchrun

bench: bench-bin
	./bin/benchrun

bench-mem: bench-bin
	./bin/benchrun -mem

# Unique-name misses through a DNAT to two pods, stock forward vs upstream (root).
bench-miss: bench-bin
	./bin/benchrun -miss

# The lab: test/lab/README.md (root: network namespaces).
lab-bins: build
	$(GO) build -o bin/coredns-stock ./test/bench/stockcoredns
	$(GO) build -o bin/lab ./test/lab/cmd/lab

lab: lab-bins
	./bin/lab run -out test/lab/results/full

lab-short: lab-bins
	./bin/lab run -short -out test/lab/results/short

# lab-ci is the short lab as `make test` runs it: every bar judged except the
# p99 latency bars, which are reported but advisory (test/lab/README.md, "CI").
lab-ci: lab-bins
	@if [ "$$(id -u)" != 0 ]; then \
		echo "SKIP lab-ci: the lab needs root (network namespaces, nftables); CI runs make test as root"; \
	else \
		out=$$(mktemp -d /tmp/lab-ci.XXXXXX); \
		./bin/lab run -short -enforce-latency=false -out $$out || { cat $$out/REPORT.md 2>/dev/null; exit 1; }; \
		echo "lab report: $$out/REPORT.md"; \
	fi

clean:
	rm -rf bin

# Debian packages (deploy/package/README.md): $(DIST)/localdns_<version>_<arch>.deb
# for each of PACKAGE_ARCHS, from a static build (CGO_ENABLED=0) per
# architecture, packed by nfpm (a Go tool dependency of deploy/package/tool).
# VERSION may carry a leading v; one that is not a dotted version number (git
# describe without tags: a commit hash) becomes 0.0.0~git<VERSION>, which
# sorts before any release.
PACKAGE_ARCHS ?= amd64 arm64
DIST ?= dist
DIGITS := 0 1 2 3 4 5 6 7 8 9
PKG_VERSION = $(if $(and $(filter $(addsuffix %,$(DIGITS)),$(VERSION:v%=%)),$(findstring .,$(VERSION))),$(VERSION:v%=%),0.0.0~git$(VERSION))

.PHONY: package
package:
	cd deploy/package/tool && $(GO) build -o $(CURDIR)/bin/nfpm github.com/goreleaser/nfpm/v2/cmd/nfpm
	@mkdir -p dist/build $(DIST)
	set -e; for arch in $(PACKAGE_ARCHS); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/build/localdns ./cmd/localdns; \
		VERSION='$(PKG_VERSION)' ARCH=$$arch ./bin/nfpm package -f deploy/package/nfpm.yaml -p deb -t $(DIST)/localdns_$(PKG_VERSION)_$$arch.deb; \
	done
	@rm -rf dist/build
