# vnet — the README's two commands are `make demo` and `make test`; each sets
# up what it needs on a fresh machine (apt packages, a virtualenv from the lock).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests, demo and benchmarks use.
APT_PACKAGES := iproute2 iputils-ping iperf3 ethtool tcpdump procps openssl \
	qemu-system-x86 busybox-static cpio tinc nginx postgresql wrk gcc libc6-dev
BENCH ?=

VM_DIR := build/vm

.PHONY: all venv apt vm test demo proto proto-check lint bench eval lock clean \
	compose-base compose-wheels compose-build compose-up compose-down compose-tail \
	compose-test

all: test

$(STAMP): requirements.lock pyproject.toml setup.py services/forwarder/_fastpath.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(STAMP)

# Installs only what is missing, so it is quick when all is there.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The tiny test VM (Debian's cloud kernel + a busybox initramfs) for QEMU guests.
$(VM_DIR)/initrd.img: services/testbed/vm/build.sh services/testbed/vm/init | apt
	bash services/testbed/vm/build.sh $(VM_DIR)

vm: $(VM_DIR)/initrd.img

test: venv apt vm
	$(VENV)/bin/pytest

demo: venv apt
	$(VENV)/bin/vnet demo

proto: venv
	$(PY) -m grpc_tools.protoc -Iproto/vnet/v1 --python_out=services/bus/pb \
	  --pyi_out=services/bus/pb proto/vnet/v1/vnet.proto

lint: venv
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/mypy services

bench: venv apt vm
	$(PY) -m bench $(BENCH)

# The original's experiments reproduced (bench/evaluation): bench/results/eval.{json,md,png}.
eval: venv apt
	$(PY) -m bench.evaluation $(SCENARIOS)

# Re-resolve the pinned versions in a scratch virtualenv.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet --upgrade pip
	.lockenv/bin/pip install --quiet -e '.[dev]'
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache

# ---- the docker compose testbed (compose/README.md) ----
# `docker compose` (v2) when present, else docker-compose (v1).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# The base image: made here from debootstrap (no registry needed), or give a public one,
# e.g. `make compose-up COMPOSE_BASE=python:3.11-slim-bookworm`.
COMPOSE_LOCAL_BASE := vnet-base:bookworm
COMPOSE_BASE ?= $(COMPOSE_LOCAL_BASE)
COMPOSE_IMAGE ?= vnet:local
COMPOSE_DIST := compose/dist

# Debian bookworm minbase + python3 → `docker import`; skipped when the image exists.
compose-base:
	@docker image inspect $(COMPOSE_LOCAL_BASE) >/dev/null 2>&1 || { \
	  command -v debootstrap >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }; \
	  bash compose/base/build.sh $(COMPOSE_LOCAL_BASE) build/compose-base; }

# The wheels the image installs offline: vnet (from a clean copy of the tree, so no
# stale build/ output slips in) and its dependencies at the locked versions.
compose-wheels: venv
	rm -rf $(COMPOSE_DIST) build/compose-src && mkdir -p $(COMPOSE_DIST)/deps $(COMPOSE_DIST)/vnet build/compose-src
	tar -c --exclude=__pycache__ --exclude="*.so" pyproject.toml setup.py README.md services | tar -x -C build/compose-src
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir $(COMPOSE_DIST)/vnet build/compose-src
	$(PY) -m pip wheel --quiet --wheel-dir $(COMPOSE_DIST)/deps -c requirements.lock \
	  $(COMPOSE_DIST)/vnet/*.whl
	rm -rf build/compose-src $(COMPOSE_DIST)/deps/vnet-*.whl
	ls $(COMPOSE_DIST)/deps | sed -nE 's/^([^-]+)-([^-]+)-.*\.whl$$/\1==\2/p' > $(COMPOSE_DIST)/deps/requirements.txt

# The image it replaces is removed when nothing uses it any more.
compose-build: compose-wheels $(if $(filter $(COMPOSE_LOCAL_BASE),$(COMPOSE_BASE)),compose-base)
	@old=$$(docker image inspect --format '{{.Id}}' $(COMPOSE_IMAGE) 2>/dev/null); \
	docker build --quiet --build-arg BASE=$(COMPOSE_BASE) -t $(COMPOSE_IMAGE) compose && \
	new=$$(docker image inspect --format '{{.Id}}' $(COMPOSE_IMAGE)) && \
	if [ -n "$$old" ] && [ "$$old" != "$$new" ]; then docker rmi "$$old" >/dev/null 2>&1 || true; fi

compose-up: compose-build
	cd compose && VNET_IMAGE=$(COMPOSE_IMAGE) $(COMPOSE) up -d --no-build
	bash compose/wait-healthy.sh vnet 300

# Leaves no container, network or volume of the project behind.
compose-down:
	cd compose && $(COMPOSE) down --volumes --remove-orphans

compose-tail:
	cd compose && $(COMPOSE) run --rm operator

compose-test: venv compose-build
	$(VENV)/bin/pytest -m compose tests/compose
