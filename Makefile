# One entry point per job; every target installs what it needs first, so each works on a
# fresh clone. PYTEST_ARGS passes extra arguments to pytest, e.g.
#   make test PYTEST_ARGS="tests/foundation -x"

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# e.g. make demo DEMO_ARGS="--provider smtp" (email through the private Postfix)
DEMO_ARGS ?=
PROMETHEUS_PORT ?= 9090

.PHONY: install system-demo system-test broker demo test bench soak lint clean monitor

install: $(STAMP)

# Re-run pip only when the dependencies change: a second `make install` is instant.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

# System packages (Java, Maven; for the tests also Prometheus, PostgreSQL, Postfix, Chromium, Node.js):
# one idempotent installer, never starting a system service (deploy/system-packages.sh).
system-demo:
	bash deploy/system-packages.sh demo

system-test:
	bash deploy/system-packages.sh test

broker: system-demo install
	$(BIN)/estop broker start

demo: system-demo install
	$(BIN)/estop demo $(DEMO_ARGS)

# The broker fixture brings up a broker itself (user's cluster, Docker or the local one).
test: system-test install
	$(BIN)/python -m pytest -m "not soak" $(PYTEST_ARGS)

bench: system-demo install
	$(BIN)/estop bench

soak: system-test install
	$(BIN)/python -m pytest -m soak $(PYTEST_ARGS)

# Prometheus in the foreground, scraping the ports of deploy/prometheus/prometheus.yml: the demo's
# worker (9464), `estop control` (6066) and the split roles (9465-9467). Ctrl-C stops it.
monitor:
	@command -v prometheus >/dev/null || { echo "prometheus is not installed: apt-get install prometheus (Debian), or see README"; exit 1; }
	@mkdir -p .data/prometheus
	@echo "Prometheus at http://localhost:$(PROMETHEUS_PORT) (targets: deploy/prometheus/prometheus.yml; log: .data/prometheus/prometheus.log; Ctrl-C stops it)"
	prometheus --config.file=deploy/prometheus/prometheus.yml --storage.tsdb.path=.data/prometheus/data \
		--web.listen-address=localhost:$(PROMETHEUS_PORT) 2>>.data/prometheus/prometheus.log

lint: install
	$(BIN)/ruff check streams tests
	$(BIN)/mypy streams tests

clean:
	if [ -x $(BIN)/estop ]; then $(BIN)/estop broker stop; fi
	rm -rf $(VENV) .data .cache build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
