# Two commands a newcomer needs: `make demo` and `make test`.
# Each first installs what a fresh Debian machine lacks (cmake and a C
# compiler, which Pingora's zlib-ng build needs).

SHELL := /bin/bash
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
CARGO ?= cargo

.PHONY: deps demo test lint unit browser-deps bench bench-smoke

deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

## Run the gateway in front of a built-in whoami app on http://127.0.0.1:8080
demo: deps
	$(CARGO) run --release --locked -- demo

## The whole test suite: lint, unit, integration and browser tests, then
## a smoke run of both benchmarks (proves the harnesses work and every
## answer is right; its figures mean nothing).
test: deps browser-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	PORTCULLIS_REQUIRE_BROWSER=1 $(CARGO) test --locked --lib --bins --tests
	BENCH_SMOKE=1 $(CARGO) bench --locked --bench gateway
	$(CARGO) bench --locked --bench micro -- --test

## Headless Chromium and its WebDriver for the browser tests.
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

## Benchmarks: the gateway against a plain Pingora passthrough (see docs/BENCHMARKS.md).
bench: deps
	$(CARGO) bench --locked --bench gateway

bench-smoke: deps
	BENCH_SMOKE=1 $(CARGO) bench --locked --bench gateway
