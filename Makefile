# The two commands of the README: `make dev` (install + run on the embedded sandbox) and
# `make test` (install everything the tests need + lint + the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install dev test lint tools proto bench clean-state

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[dev,celery]"
	$(PIP) check
	touch $@

# Runs Dagster's webserver + daemon on http://127.0.0.1:3000. With no KPI_SALESFORCE_*
# credentials the sandbox org starts in-process and the simulator feeds it.
dev: install
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# External tools used by integration tests: Prometheus (Debian), the Salesforce CLI (npm) and
# the npm Pub/Sub client the conformance tests drive (pinned with underscore beside it: its
# avro-js requires underscore without declaring it); Chromium (Debian) for the Dagster UI test.
tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-pushgateway >/dev/null; }
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@[ -x sf/node_modules/.bin/sf ] || (cd sf && npm ci --no-audit --no-fund --loglevel=error)
	@[ -d kpi_pipeline_tests/sandbox/conformance/node/node_modules/underscore ] || \
	  (cd kpi_pipeline_tests/sandbox/conformance/node && npm ci --no-audit --no-fund --loglevel=error)

lint: install
	$(VENV)/bin/ruff check kpi_pipeline kpi_pipeline_tests bench
	$(VENV)/bin/ruff format --check kpi_pipeline kpi_pipeline_tests bench
	PYTHONPATH=. $(VENV)/bin/lint-imports --no-logo --no-cache

test: install tools lint
	$(VENV)/bin/dagster definitions validate -w workspace.yaml
	$(PY) -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

proto: install
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. kpi_pipeline/adapters/pubsub/proto/pubsub_api.proto

bench: install
	$(PY) bench/run_all.py

# Forget local state: sensor cursor, run history, sandbox org, ledger.
clean-state:
	-[ -f .kpi_data/sandbox.json ] && $(PY) -c "from kpi_pipeline.sandbox.runtime import shutdown_sandbox; shutdown_sandbox('.kpi_data')"
	rm -rf .dagster_home .kpi_data
