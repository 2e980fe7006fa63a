# portwatch — every command a developer or CI needs. `make help` lists them.
# `make test` is exactly what CI runs (.ci/run calls it): it installs what it needs.

SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
STAMPS := .cache/stamps

# Debian packages: scanners to compare with and drive (masscan, nmap, sslscan), the
# nmap data files read at run time (nmap-common), network-namespace tools for test
# hosts (iproute2, nftables, iptables), and the real services the tests scan: mail
# (postfix, dovecot), LDAP (slapd), XMPP (prosody), IRC (inspircd), NNTP (inn2's nnrpd)
# and MQTT (mosquitto) for STARTTLS and identification; ndiff is nmap's scan differ, the anchor of bench/history. xrdp,
# rabbitmq-server, snmpd, samba, memcached, lighttpd and tinyproxy: real daemons that
# identification depth (issue 15) is tested and benchmarked against. python3-venv: `make`
# builds .venv with it (Debian 12 leaves ensurepip out of python3); curl fetches Go's
# toolchain when the machine has no Go for helm (deploy/helm/go-toolchain.sh).
APT_PACKAGES := python3-venv curl masscan nmap nmap-common sslscan openssl iproute2 iptables nftables \
	libpcap0.8 nginx-light openssh-server openssh-client redis-server vsftpd \
	postgresql mariadb-server gnutls-bin openjdk-17-jre-headless maven chromium libcap2-bin \
	postfix dovecot-imapd dovecot-pop3d dovecot-managesieved slapd ldap-utils prosody \
	mosquitto inspircd inn2 ndiff xrdp rabbitmq-server snmpd samba memcached lighttpd tinyproxy

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-14s %s\n", $$1, $$2}'

$(STAMPS):
	@mkdir -p $@

.PHONY: apt
apt: $(STAMPS)/apt ## Install the Debian packages (masscan, nmap, servers for tests)
$(STAMPS)/apt: Makefile deploy/local/apt-install.sh | $(STAMPS)
	@deploy/local/apt-install.sh $(APT_PACKAGES)
	@touch $@

.PHONY: venv
venv: $(STAMPS)/venv ## Create the virtualenv and install portwatch with dev tools
$(STAMPS)/venv: pyproject.toml | $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@$(PIP) install -q -e '.[dev]'
	@touch $@

.PHONY: install
install: apt venv ## Everything portwatch needs (Debian packages + virtualenv)

.PHONY: scan
scan: install ## Scan 127.0.0.1 (all TCP + top 1,000 UDP ports, embedded store), show Summary and List
	$(VENV)/bin/portwatch scan 127.0.0.1
	$(VENV)/bin/portwatch report summary
	$(VENV)/bin/portwatch report list

.PHONY: lint
lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check portwatch producers probers stream_processors schemas tests bench deploy
	$(PY) -m deploy.grafana.build_dashboards --check
	$(VENV)/bin/mypy

include deploy/local/kafka/kafka.mk

.PHONY: helm
helm: ## Build helm and kubecheck from the Go module proxy into .cache/bin (for the chart test)
	@deploy/helm/install-helm.sh
	@deploy/helm/install-kubecheck.sh

# Two pytest workers (pytest-xdist), one test module per worker at a time (--dist loadfile):
# a module's namespace test hosts use its own fixed 198.18.<index>.0/24, and its fixtures
# (servers, stores) are shared by its tests. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

# pytest exits 5 when it collected no test: that is a failure for us, never a pass.
.PHONY: test
test: install helm ## Lint, then every test (brings the Kafka broker up and down)
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory kafka-up
	@set +e; PORTWATCH_TEST_STRICT=1 $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	  $(MAKE) --no-print-directory kafka-down; \
	  if [ $$rc = 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

.PHONY: check
check: test ## Same as test: exactly what CI runs

# The fuzz corpus (tests/fuzz) runs in every `make test` with the bounded "ci" profile;
# this runs it with the long "fuzz" profile (20,000 examples per property).
.PHONY: fuzz
fuzz: venv ## Property/fuzz tests of every parser of hostile input, long profile (tests/fuzz)
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest tests/fuzz -q --timeout 7200

.PHONY: serve
serve: install ## Serve the four reports on http://127.0.0.1:8765
	$(VENV)/bin/portwatch serve

.PHONY: grafana
grafana: venv ## Regenerate the Grafana dashboards under deploy/grafana
	$(PY) -m deploy.grafana.build_dashboards

.PHONY: bench bench-connect bench-discovery bench-udp bench-identify bench-web bench-pipeline \
	bench-tls bench-history bench-history-floor bench-upgrade bench-alerts
bench: bench-connect bench-identify bench-web bench-pipeline bench-discovery bench-udp bench-tls bench-history bench-history-floor bench-upgrade bench-alerts ## All benchmarks (BENCHMARKS.md)
bench-connect: install ## Full TCP sweep of 127.0.0.1 vs nmap -sT
	$(PY) -m bench.connect_sweep --runs 5
bench-discovery: install ## masscan engine vs nmap -sS vs masscan on namespace hosts (root)
	$(PY) -m bench.discovery
bench-udp: install ## UDP top 1,000 of a namespace host vs nmap -sU (root; nmap takes ~18 min a run)
	$(PY) -m bench.udp_top1000 --runs 3
bench-identify: install ## Identification of real services vs nmap -sV
	$(PY) -m bench.identify
bench-tls: install ## TLS suites, direct and through STARTTLS, vs sslscan (root: starts daemons)
	$(PY) -m bench.tls --runs 5
bench-web: install ## Pages and API on 100,000 findings
	$(PY) -m bench.web
bench-history: install ## Change history at scale (sizes: HISTORY_ARGS="--hosts 100000 --days 90") vs ndiff
	$(PY) -m bench.history $(HISTORY_ARGS)
bench-history-floor: install ## The store statements a columnar change screen could not skip, vs ndiff
	$(PY) -m bench.history_floor
bench-alerts: install ## One alert delivery pass of a burst of 2,000 events (claims, sends)
	$(PY) -m bench.alert_pass
bench-upgrade: install ## A store built by older code (layout 9), upgraded in place: its pages and days
	$(PY) -m bench.upgrade $(UPGRADE_ARGS)
bench-pipeline: install ## Kafka -> Faust -> chdb throughput vs the embedded runner
	$(MAKE) --no-print-directory kafka-up
	$(PY) -m bench.pipeline

.PHONY: clean
clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
