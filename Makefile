# camstack — the two commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
# make demo-cloud: encode workers on a NATS JetStream queue (0: one encoder on MQTT).
WORKERS ?= 2
APT_PACKAGES := mosquitto mosquitto-clients libmosquitto-dev mosquitto-dev gcc ffmpeg g++ make \
                openssl postgresql prometheus chromium chromium-driver iproute2
# Debian names of the binaries we check before calling apt-get.
APT_BINARIES := /usr/sbin/mosquitto /usr/bin/mosquitto_sub /usr/include/mosquitto.h \
                /usr/include/mosquitto_broker.h /usr/include/mosquitto_plugin.h /usr/bin/gcc \
                /usr/bin/ffprobe /usr/bin/g++ /usr/bin/openssl \
                /usr/lib/postgresql/15/bin/initdb /usr/lib/postgresql/15/bin/pg_ctl \
                /usr/bin/promtool /usr/bin/chromium /usr/bin/chromedriver /usr/sbin/ip

.PHONY: help deps venv lint typecheck firmware-test guard-plugin guard-test promtool pytest test \
        demo demo-cloud demo-cluster up broker clean

help:
	@echo "make demo   - broker + ingestor + encoder + simulated cameras, until MP4s exist"
	@echo "make test   - ruff, mypy --strict, firmware host tests, pytest (unit + integration)"
	@echo "make demo-cloud - the demo on SeaweedFS, PostgreSQL and WORKERS=2 NATS JetStream encode workers"
	@echo "make demo-cluster - 3 NATS nodes, 2 partitioned ingestors, JetStream encode workers, simulated cameras"
	@echo "make demo WEB=1 - the demo, then the web page stays up (prints its URL) until Ctrl-C"
	@echo "make up     - the stack in the foreground for real cameras, restarting what dies (Ctrl-C stops it)"
	@echo "make broker - only the local broker in the foreground"

# Debian packages, only when something is missing (needs root or sudo).
deps:
	@missing=0; for f in $(APT_BINARIES); do [ -e $$f ] || missing=1; done; \
	pkgs="$(APT_PACKAGES)"; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then missing=1; pkgs="$$pkgs python3-venv"; fi; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $$pkgs"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$pkgs; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

firmware-test: deps
	$(MAKE) -C firmware test

# The broker guard plugin (broker/plugin): every broker run loads it, tests included.
guard-plugin: deps
	$(MAKE) -C broker/plugin

guard-test: deps
	$(MAKE) -C broker/plugin test

# Prometheus scrape config, alerting rules and their unit tests (deploy/prometheus/).
promtool: deps
	cd deploy/prometheus && promtool check config prometheus.yml && \
	  promtool check rules camstack-rules.yml && promtool test rules camstack-rules.test.yml

# Two workers (pytest-xdist), each test file on one worker: most integration tests wait on
# servers, timeouts and failovers, so two share 2 CPUs well (17.5 -> 9 min measured).
# PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2
pytest: deps venv guard-plugin
	$(PY) -m pytest -q -p no:cacheprovider $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test: deps venv lint typecheck firmware-test guard-test promtool pytest

# `make demo WEB=1`: the same, then the stack and the web page stay up until Ctrl-C.
demo: deps venv guard-plugin
	$(VENV)/bin/camstack --data-dir $(DATA) demo $(if $(WEB),--web)

# The demo on a SeaweedFS (S3) and a PostgreSQL started locally for the run.
demo-cloud: deps venv guard-plugin
	$(VENV)/bin/camstack --data-dir $(DATA) demo --cloud --workers $(WORKERS)

# broker.engine = "nats": 3 NATS nodes, ingestors owning partitions 0-31 and 32-63,
# encode workers on a JetStream queue, SeaweedFS and PostgreSQL started for the run.
demo-cluster: deps venv
	$(VENV)/bin/camstack --data-dir $(DATA) demo --cluster --workers $(WORKERS)

# `camstack up` prepares the data folder, then becomes supervisord (foreground): a
# process that dies is restarted, the others keep running; Ctrl-C stops all, exit 0.
up: deps venv guard-plugin
	$(VENV)/bin/camstack --data-dir $(DATA) up

broker: deps venv guard-plugin
	$(VENV)/bin/camstack --data-dir $(DATA) run

clean:
	rm -rf $(VENV) firmware/build broker/plugin/build .mypy_cache .ruff_cache
