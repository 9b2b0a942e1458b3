# vnet — the README's two commands are `make demo` and `make test`; each sets
# up what it needs on a fresh machine (apt packages, a virtualenv from the lock).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests, demo and benchmarks use.
APT_PACKAGES := iproute2 iputils-ping iperf3 ethtool tcpdump procps openssl \
	qemu-system-x86 busybox-static cpio tinc
BENCH ?=

VM_DIR := build/vm

.PHONY: all venv apt vm test demo proto proto-check lint bench lock clean

all: test

$(STAMP): requirements.lock pyproject.toml
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

# Re-resolve the pinned versions in a scratch virtualenv.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet --upgrade pip
	.lockenv/bin/pip install --quiet -e '.[dev]'
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
