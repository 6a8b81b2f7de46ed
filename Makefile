# localdns — build, test, benchmark.
#
#   make run      build and run on the embedded laptop profile (unprivileged)
#   make test     everything CI runs: vet, unit, integration, netns and e2e tests
#   make bench    cache-hit benchmark: stock CoreDNS cache vs localdns, one run
#   make lab      the full seed experiment in network namespaces (root)

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build run test vet deps clean

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

test: vet
	$(GO) test -count=1 -timeout 20m ./...

clean:
	rm -rf bin
