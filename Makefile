# cnm — Docker's container networking in Python.  Quickstart (as root, Debian 12):
#   make demo    install what is missing, start cnmd, run the tour (on this host)
#   make test    the whole suite (unit + integration + e2e, in throwaway namespaces)

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
CNM         := $(VENV)/bin/cnm
IMAGE_TAR   := images/busybox.tar
PYTEST_ARGS ?=
APT_PKGS    := iproute2 nftables iptables runc busybox-static libnftables1 iperf3

.PHONY: help deps venv image test unit integration e2e demo demo-sandbox bench bench-attach bench-ports lint clean

help:
	@echo "make demo | demo-sandbox | test | unit | integration | e2e | bench | bench-attach | bench-ports | lint | deps | venv | image | clean"

# Only what is missing, so a second run is instant.
deps:
	@missing=""; for p in $(APT_PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "apt-get install:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends $$missing || { apt-get update && apt-get install -y --no-install-recommends $$missing; }; \
	fi

$(VPY):
	$(PYTHON) -m venv $(VENV)

# pyproject.toml changes re-install; a plain re-run is a no-op.
$(VENV)/.installed: pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	$(VPY) -m compileall -q src  # the CLI starts faster from bytecode (PYTHONDONTWRITEBYTECODE may be set)
	$(VPY) scripts/fast-cli-launcher $(VENV) src  # the CLI without site: ~3.5 ms less per call
	touch $@

venv: $(VENV)/.installed

$(IMAGE_TAR): scripts/make-busybox-tar
	$(PYTHON) scripts/make-busybox-tar $@

image: $(IMAGE_TAR)

test: venv
	$(VPY) -m pytest -rfEs $(PYTEST_ARGS) tests/unit tests/integration tests/e2e

unit: venv
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests/unit

integration: venv
	$(VPY) -m pytest -rfEs $(PYTEST_ARGS) tests/integration

e2e: venv
	$(VPY) -m pytest -rfEs $(PYTEST_ARGS) tests/e2e

# On THIS host: cnmd with its default roots (/var/lib/cnm, /run/cnm), bridge cnm0.
demo: deps venv image
	scripts/start-cnmd
	$(CNM) image import $(IMAGE_TAR) busybox
	scripts/tour.sh

# The same, inside a throwaway network+mount+pid namespace: nothing on this host changes.
demo-sandbox: deps venv image
	scripts/in-sandbox --daemon --image $(IMAGE_TAR) -- scripts/tour.sh

# Benchmarks run in throwaway hosts too.  PORTS_ARGS: flags for bench/ports.py (e.g. PORTS_ARGS=--quick).
PORTS_ARGS  ?=

bench: bench-attach bench-ports

bench-attach: deps venv image
	$(VPY) bench/attach.py --image $(IMAGE_TAR)

bench-ports: deps venv image
	$(VPY) bench/ports.py --image $(IMAGE_TAR) $(PORTS_ARGS)

# Issue 4: embedded DNS latency and queries/s from inside a container, cnm beside Docker.
.PHONY: bench-dns
bench-dns: deps venv image
	$(VPY) bench/dns.py --image $(IMAGE_TAR)

# Issue 7: `run --rm busybox echo hi` prints hi every time -- 200 runs per mode (plain,
# --net host, --net none, -t, sleep first), through cnm and the docker CLI, in a throwaway host.
SOAK_RUNS ?= 200
.PHONY: soak-run
soak-run: deps venv image
	$(VPY) bench/run_output.py --image $(IMAGE_TAR) -n $(SOAK_RUNS)

lint: venv
	$(VENV)/bin/ruff check src tests bench scripts/make-busybox-tar scripts/in-sandbox scripts/fast-cli-launcher

clean:
	rm -rf images build .pytest_cache .ruff_cache
