# PIM SRE Lab. Every target goes through the project CLI (`pimlab`) in the project's venv.
# `make lab` brings up the lab; `make test` runs the tests. Both install what they need.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIMLAB := $(VENV)/bin/pimlab
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)
# Debian packages the project needs: unixODBC for pyodbc (SQL Server driver manager),
# Prometheus and promtool for real rule evaluation; podman, mmdebstrap, gcc and containerd's
# ctr to build the node's images without a registry and import them (`make image`); the real
# node's runtime: containerd, runc, the CNI reference plugins, iptables, conntrack, iproute2;
# wrk as the load engine's benchmark baseline; PostgreSQL 15 for the postgres Shard engine (its
# instance manager and failover tests run Debian's PostgreSQL for real on loopback).
DEBIAN_PACKAGES := libodbc2 unixodbc prometheus podman mmdebstrap gcc libc6-dev containerd \
	runc containernetworking-plugins iptables conntrack iproute2 wrk postgresql-15

.PHONY: help deps venv controlplane kwok prometheus-operator dashboards image slo-proof cluster-up cluster-down cluster-status crds docs golden lab lab-down test bench bench-booking bench-stack bench-operator bench-load bench-failover bench-gateway flux thirdparty-crds docs-validate diagrams node gitops drill gitops-down up down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

# apt's output goes to .lab/logs/deps.log, shown (its last 30 lines) only when it fails, as the
# build steps' output is (pimlab/cluster/progress.py).
deps: ## install the Debian packages the project needs (only the missing ones)
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "ok   Debian packages: up to date"; exit 0; fi; \
	mkdir -p .lab/logs; log=$$PWD/.lab/logs/deps.log; started=$$(date +%s); \
	echo "..   Debian packages: installing $$missing"; \
	if { $(SUDO) apt-get update -qq && \
	     DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; } >$$log 2>&1; then \
	  echo "ok   Debian packages: $$(( $$(date +%s) - started )) s"; \
	else \
	  echo "FAIL Debian packages: failed after $$(( $$(date +%s) - started )) s"; \
	  echo "     last 30 lines of $$log:"; tail -n 30 $$log | sed 's/^/     | /'; \
	  echo "     full log: $$log"; exit 1; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,report]'
	@touch $@

venv: $(VENV)/.installed ## the Python virtual environment with the project and its test tools

controlplane: venv ## compile the control plane, kubelet, kube-proxy and add-ons once into ~/.cache/pimlab (Go module proxy)
	$(PIMLAB) cluster build

kwok: venv ## compile kwok once into ~/.cache/pimlab (the kwok nodes: PIMLAB_NODE=kwok and the tests' simulated namespaces)
	$(PIMLAB) cluster build-kwok

image: deps venv ## build the node's images (pause, CoreDNS, local-path, the project's) if their inputs changed
	$(PY) -m pimlab.cluster.images build

prometheus-operator: venv ## compile prometheus-operator, its config reloader and Prometheus once into ~/.cache/pimlab (Go module proxy)
	$(PY) -m pimlab.cluster.prometheus_operator_build

flux: venv ## compile Flux's source-controller and kustomize-controller once into ~/.cache/pimlab (Go module proxy)
	$(PY) -m pimlab.cluster.flux_build

thirdparty-crds: venv ## fetch the Flux, Chaos Mesh and grafana-operator CRDs the tests install from their Go modules into ~/.cache/pimlab (pinned in pimlab/cluster/thirdparty_crds.py)
	$(PY) -m pimlab.cluster.thirdparty_crds

dashboards: venv ## rebuild dashboards/ with grafana-foundation-sdk (review the diff)
	$(PY) -m pimlab.dashboards

# `cluster up` and `lab up` build what the chosen node needs themselves, the Go builds beside the
# image builds (pimlab/cluster/local_cluster.py).
cluster-up: deps venv ## start the local cluster (PIMLAB_NODE=auto|real|kwok: a real node, or kwok nodes only)
	$(PIMLAB) cluster up

cluster-down: venv ## stop the local cluster and remove every trace (processes, mounts, bridge, iptables chains)
	$(PIMLAB) cluster down

cluster-status: venv ## which components run, the node mode, nodes and add-on pods
	$(PIMLAB) cluster status

# Node.js and npm run the Mermaid tools; Debian's, unless the machine has them already.
node: ## Node.js and npm, for the Mermaid parser and renderer (npm packages cached in ~/.cache/pimlab)
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }

docs-validate: venv node ## check the docs: repository paths and make targets they name, links, the CRD reference, Mermaid diagrams
	$(PIMLAB) docs-validate

diagrams: venv node ## render docs/diagrams/*.mmd into SVGs with mermaid-cli and Debian's chromium (both installed if missing)
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	$(PIMLAB) diagrams

crds: venv ## regenerate crds/ from the pydantic models
	$(PIMLAB) crds

docs: venv ## regenerate docs/reference/crds.md, the CRD reference, from the pydantic models
	$(PIMLAB) docs

golden: venv ## rewrite tests/golden/ from what the operator renders for samples/ (review the diff)
	PIMLAB_UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/operator/test_golden.py

lab: deps venv ## bring up the lab: control plane, CRDs, operator, samples
	$(PIMLAB) lab up

# The lab as `make lab` leaves it (or brings it up), then samples/60-drills.yaml's
# primary-loss-under-load: baseline, shard-00's primary pod killed under load, recovery, verdict.
drill: lab ## run the sample drill on the lab and print its verdict; the report lands in .lab/reports/
	$(PIMLAB) drill run primary-loss-under-load

lab-down: venv ## stop the operator and the control plane
	$(PIMLAB) lab down

gitops: cluster-up flux ## the lab from Git: a Git server on loopback serving this tree's HEAD, Flux reconciling it
	$(PIMLAB) gitops up

gitops-down: venv ## stop Flux, the Git server, the operator and the control plane (what lab-down does)
	$(PIMLAB) lab down

up: venv ## with Docker and kind: kind cluster A, the image built and loaded, the lab (FORK=<git url>: Flux from your fork); without Docker: `make lab`
	@if $(PIMLAB) kind check $(if $(FORK),--fork $(FORK)); then \
	  $(PIMLAB) kind up $(if $(FORK),--fork $(FORK)); \
	else echo "make up: running \`make lab\` (the local cluster) instead"; $(MAKE) lab; fi

down: venv ## delete the kind cluster (without Docker: `make lab-down`)
	@if $(PIMLAB) kind check >/dev/null; then $(PIMLAB) kind down; else $(MAKE) lab-down; fi

# The suite runs on TEST_WORKERS pytest-xdist workers, each test module on one of them and the
# modules sharing the real node or fixed names on one together (tests/conftest.py); then, alone,
# the tests that need the cluster to themselves (`exclusive`). Both share one run id, so the cluster the run started is stopped once,
# at the end.
TEST_WORKERS ?= 3
test: deps controlplane kwok prometheus-operator flux thirdparty-crds image docs-validate ## run the test suite (starts the control plane if it is not running)
	@export PIMLAB_TEST_SESSION=$$(od -An -N8 -tx8 /dev/urandom | tr -d ' '); \
	PIMLAB_KEEP_CLUSTER=1 $(PY) -m pytest -n $(TEST_WORKERS) --no-loadscope-reorder \
	  -m "not exclusive" --durations=25; parallel=$$?; \
	$(PY) -m pytest -m exclusive; alone=$$?; \
	exit $$(( parallel != 0 ? parallel : alone ))

slo-proof: deps controlplane prometheus-operator image ## on the real node: SLO page alerts fire under injected faults with the persona engine's load, and resolve
	PIMLAB_NODE=real $(PY) -m pytest -q -p no:cacheprovider tests/cluster/test_slo_alerts_real_node.py

bench: bench-booking bench-stack bench-load bench-operator ## every benchmark, printed as figures and ratios against a baseline

bench-booking: deps venv ## bookings: highest rate at p99 < 50 ms, CPU per booking and per /healthz against a bare FastAPI floor (BENCH_BASELINE=main: the unchanged code too, same run)
	$(PY) tests/benchmarks/bench_booking.py

bench-stack: deps venv ## the per-request stack part by part, and the relay and projection per event (BENCH_BASELINE=main: that revision too)
	$(PY) tests/benchmarks/bench_request_stack.py $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))

bench-load: deps venv ## the load engine's capacity (p99 schedule lag < 5 ms) as a ratio to wrk
	$(PY) tests/benchmarks/bench_load_engine.py

bench-failover: deps controlplane image ## shard failover on the real node: primary loss -> first acknowledged write, median/max of 5 (PIMLAB_NODE=real)
	$(PY) tests/benchmarks/bench_failover.py

# Not in `make bench`: it brings up the real node and the lab (minutes, the machine's one real node).
bench-gateway: deps controlplane image ## bookings through the gateway on the real node: gateway -> encounter -> PostgreSQL primary (sync standbys); p99 < 50 ms rate, CPU per booking by pod
	PIMLAB_NODE=real $(PY) tests/benchmarks/bench_gateway.py

bench-operator: deps controlplane ## 300 objects through the operator against the floor (direct apply) on kwok; RSS, idle CPU
	$(PY) tests/benchmarks/bench_operator.py

clean: cluster-down ## remove the venv and every local state
	rm -rf $(VENV) .lab
