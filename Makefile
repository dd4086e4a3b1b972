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
# What the suite and the demo run (procps: ps/sysctl in the tests; python3-venv: make venv).
# etcd-server, etcd-client (etcdctl), openssl (throwaway certificates for TLS to etcd): the etcd
# backend of the Store is tested against real members (tests/etcd_cluster.py).  wireguard-go: the
# encrypted overlay's WireGuard interfaces (this kernel has no WireGuard module); wireguard-tools:
# `wg`, to replay the logged `wg set` lines and to cross-check the UAPI decoding in the tests.
# graphviz (`dot`): `cnm network map --format svg`; conntrack: the live flows `cnm explain` shows.
APT_PKGS    := iproute2 nftables iptables runc busybox-static libnftables1 iperf3 procps python3-venv etcd-server etcd-client openssl wireguard-go wireguard-tools graphviz conntrack
# The client tier drives cnmd with Docker's own tools: Compose v1 (Debian's; Compose v2 is on
# neither Debian 12 nor PyPI).  The Docker SDK for Python comes with the test extras.
CLIENT_PKGS := docker-compose
# The live page (cnmd --ui-addr) is tested, and shown by demo-sandbox, in headless Chromium,
# driven over its DevTools pipe (tests/chromium.py): the browser alone, no chromedriver.
UI_PKGS     := chromium
# Where demo-sandbox leaves the page's screenshot and the map's SVG (the sandbox is gone after).
DEMO_OUT    ?= $(CURDIR)/demo-out

.PHONY: help deps clients-deps ui-deps venv image test unit integration e2e clients demo demo-sandbox bench bench-attach bench-ports lint clean

help:
	@echo "make demo | demo-sandbox | test | unit | integration | e2e | clients | bench | bench-attach | bench-ports | bench-scale | bench-ui | bench-wireguard | bench-overlay | soak-iptables | lint | deps | venv | image | clean"

# $(call apt_ensure,PKGS): install those of PKGS that are missing, so a second run is instant.
define apt_ensure
	@missing=""; for p in $(1); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "apt-get install:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends $$missing || { apt-get update && apt-get install -y --no-install-recommends $$missing; }; \
	fi
endef

deps:
	$(call apt_ensure,$(APT_PKGS))

clients-deps:
	$(call apt_ensure,$(CLIENT_PKGS))

ui-deps:
	$(call apt_ensure,$(UI_PKGS))

# Debian's python3 makes no venv without python3-venv: fetched here only when it is missing.
$(VPY):
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || $(MAKE) --no-print-directory venv-deps
	$(PYTHON) -m venv $(VENV)

.PHONY: venv-deps
venv-deps:
	$(call apt_ensure,python3-venv)

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

# The root tiers run runc, nft, busybox ... : a fresh machine gets them first (deps).
test: deps clients-deps ui-deps venv image
	$(VPY) -m pytest -rfEs $(PYTEST_ARGS) tests/unit tests/integration tests/e2e tests/clients

unit: venv
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests/unit

integration: deps venv image
	$(VPY) -m pytest -rfEs $(PYTEST_ARGS) tests/integration

e2e: deps ui-deps venv image
	$(VPY) -m pytest -rfEs $(PYTEST_ARGS) tests/e2e

# Docker's own tools (docker-compose, the docker CLI, the Docker SDK) against cnmd.
clients: deps clients-deps venv image
	$(VPY) -m pytest -rfEs $(PYTEST_ARGS) tests/clients

# On THIS host: cnmd with its default roots (/var/lib/cnm, /run/cnm), bridge cnm0.
demo: deps venv image
	scripts/start-cnmd
	$(CNM) image import $(IMAGE_TAR) busybox
	scripts/tour.sh

# The same, inside a throwaway network+mount+pid namespace: nothing on this host changes.
# Then the live page in a second sandbox: a screenshot of it and the map's SVG, in DEMO_OUT.
demo-sandbox: deps ui-deps venv image
	scripts/in-sandbox --daemon --image $(IMAGE_TAR) -- scripts/tour.sh
	scripts/in-sandbox --daemon-flag=--ui-addr=127.0.0.1:8088 --image $(IMAGE_TAR) -- scripts/ui-demo $(DEMO_OUT)

# Benchmarks run in throwaway hosts too.  PORTS_ARGS: flags for bench/ports.py (e.g. PORTS_ARGS=--quick).
PORTS_ARGS  ?=

bench: bench-attach bench-ports

bench-attach: deps venv image
	$(VPY) bench/attach.py --image $(IMAGE_TAR)

bench-ports: deps venv image
	$(VPY) bench/ports.py --image $(IMAGE_TAR) $(PORTS_ARGS)

# Issue 11: how soon the live page shows a connect, disconnect, run, rm (headless Chromium).
.PHONY: bench-ui
bench-ui: deps ui-deps venv image
	$(VPY) bench/ui.py --image $(IMAGE_TAR)

# Issue 4: embedded DNS latency and queries/s from inside a container, cnm beside Docker.
.PHONY: bench-dns
bench-dns: deps venv image
	$(VPY) bench/dns.py --image $(IMAGE_TAR)

# Issue 9: the Store backends and the etcd clients (put, get, CAS, list, watch latency).
.PHONY: bench-store
bench-store: deps venv
	$(VPY) -m pip install -q -e '.[bench]'
	$(VPY) bench/store.py

# Issue 9: network create with 0..1,000 networks, cnmd restart with 1,000 containers, attach and
# ports -- the current code beside the last release (git tag v0.1.0), in throwaway hosts.
# SCALE_ARGS: flags for bench/scale.py (e.g. SCALE_ARGS=--quick).
SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: deps venv image
	$(VPY) bench/scale.py --image $(IMAGE_TAR) $(SCALE_ARGS)

# The last release's sources as `git archive TAG src` (tests/oldrelease.py runs them): kept in
# the repository because a clone need not carry the tag.  Needs the tag in this clone.
TAG ?= v0.1.0
.PHONY: release-archive
release-archive:
	git archive --format=tar $(TAG) src | xz -9e > tests/releases/$(TAG)-src.tar.xz

# Issue 10: TCP between two namespaces over the underlay, kernel VXLAN, wireguard-go, and VXLAN
# over wireguard-go (the encrypted overlay).  WG_ARGS: flags for bench/wireguard.py (e.g. --quick).
WG_ARGS ?=
.PHONY: bench-wireguard
bench-wireguard: deps venv
	$(VPY) bench/wireguard.py $(WG_ARGS)

# Issue 7: container-to-container throughput with and without the anti-spoofing guard.
.PHONY: bench-antispoof
bench-antispoof: deps venv image
	$(VPY) bench/antispoof.py --image $(IMAGE_TAR) $(ANTISPOOF_ARGS)

# Issue 10: cnm's overlay in a two-host lab: connect -> first reply across hosts, TCP beside raw
# kernel VXLAN and the underlay, and the control plane at scale (bench/overlay_sim.py: 20
# simulated hosts on one etcd).  OVERLAY_ARGS: e.g. --quick, --parts connect,tcp,sim.
.PHONY: bench-overlay
bench-overlay: deps venv image
	$(VPY) bench/overlay.py --image $(IMAGE_TAR) $(OVERLAY_ARGS)

# Issue 7: 50 fresh starts of cnmd on the iptables backend per variant (nft, legacy), each in
# its own throwaway host; prints how many passed.  SOAK_ARGS: e.g. --runs 10 --variant nft.
SOAK_ARGS ?=

.PHONY: soak-iptables
soak-iptables: deps venv image
	$(VPY) scripts/soak-iptables --image $(IMAGE_TAR) $(SOAK_ARGS)

# Issue 7: `run --rm busybox echo hi` prints hi every time -- 200 runs per mode (plain,
# --net host, --net none, -t, sleep first), through cnm and the docker CLI, in a throwaway host.
SOAK_RUNS ?= 200
.PHONY: soak-run
soak-run: deps venv image
	$(VPY) bench/run_output.py --image $(IMAGE_TAR) -n $(SOAK_RUNS)

# Tools hold the design, and .ci/run runs this before the suite: style and lint (ruff), the
# layer contracts ([tool.importlinter] in pyproject.toml; tests/unit/test_layers.py adds the
# dynamic imports and proves each contract can fail), types (mypy, [tool.mypy]).
LINT_PATHS := src tests bench scripts/make-busybox-tar scripts/in-sandbox scripts/fast-cli-launcher scripts/soak-iptables scripts/ui-demo

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

clean:
	rm -rf images build .pytest_cache .ruff_cache

# Install cnm as a service: a venv under CNM_HOME, cnm/cnmd linked into PREFIX/bin, the
# systemd unit in SYSTEMD_DIR.  Then: systemctl enable --now cnmd
PREFIX      ?= /usr/local
CNM_HOME    ?= /opt/cnm
SYSTEMD_DIR ?= /etc/systemd/system
UNIT_OUT    ?= $(SYSTEMD_DIR)/cnmd.service

.PHONY: install systemd-unit
systemd-unit:
	install -d $(dir $(UNIT_OUT))
	sed -e 's|@BINDIR@|$(PREFIX)/bin|g' -e 's|@DOCDIR@|$(CNM_HOME)|g' contrib/systemd/cnmd.service.in > $(UNIT_OUT)

install: deps systemd-unit
	$(PYTHON) -m venv $(CNM_HOME)
	$(CNM_HOME)/bin/pip install -q .
	install -d $(PREFIX)/bin
	ln -sf $(CNM_HOME)/bin/cnm $(PREFIX)/bin/cnm
	ln -sf $(CNM_HOME)/bin/cnmd $(PREFIX)/bin/cnmd
	install -m 644 README.md $(CNM_HOME)/README.md
	if [ "$(SYSTEMD_DIR)" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# Issue 7: 8 workers for STRESS_SECONDS through the API against one cnmd (a throwaway host),
# then tests/consistency.py proves store and kernel agree.  The e2e tier runs it for 15 s.
STRESS_SECONDS ?= 60
.PHONY: stress
stress: deps venv image
	CNM_STRESS_SECONDS=$(STRESS_SECONDS) $(VPY) -m pytest -rfEs -s -p no:cacheprovider $(PYTEST_ARGS) \
	    tests/e2e/test_e2e_stress.py -k test_stress
