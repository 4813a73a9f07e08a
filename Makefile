# Two commands matter: `make demo` (the whole lifecycle on embedded defaults) and `make test`.
# Both bootstrap what they need: uv (via pip when absent), .venv from uv.lock, Redis and PostgreSQL.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export UV_COMPILE_BYTECODE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export WHYLOGS_NO_ANALYTICS := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PYTHONPATH := $(CURDIR)
# The demo's Prefect state stays in the repository unless a Prefect server or home is configured.
export PREFECT_HOME ?= $(CURDIR)/.rtml/prefect

UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.rtml/tools/bin/uv)
PY := .venv/bin/python
# checkov and pip-audit, locked apart from the project (deploy/security-tools/pyproject.toml says why).
SECURITY_TOOLS := .rtml/tools/security

.PHONY: help demo test bench chaos lint format services databases audit clean

help:
	@echo "make demo    run the whole lifecycle on embedded defaults (DEMO_SMALL=1 for small data)"
	@echo "make test    run the whole test suite against local Redis and PostgreSQL"
	@echo "make bench   run the benchmark scripts and print their figures"
	@echo "make chaos   run the fault scenarios at full length and print their figures (docs/reliability.md)"
	@echo "make lint    ruff and the pre-commit hooks"
	@echo "make audit   the locked dependencies against known vulnerabilities (pip-audit; needs the internet)"

$(UV):
	@echo "==> uv not found: installing it with pip into .rtml/tools"
	python3 -m venv .rtml/tools
	.rtml/tools/bin/pip install --quiet uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	@echo "==> installing the locked environment into .venv"
	$(UV) sync --frozen
	@touch $@

$(SECURITY_TOOLS)/.synced: deploy/security-tools/pyproject.toml deploy/security-tools/uv.lock | $(UV)
	@echo "==> installing checkov and pip-audit into $(SECURITY_TOOLS)"
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/$(SECURITY_TOOLS) $(UV) sync --frozen --project deploy/security-tools
	@touch $@

services:
	@bash deploy/local/services.sh

# The empty Prefect and MLflow databases new local homes start from (migrating them costs ~8 s and ~1.5 s).
databases: .venv/.synced
	@$(PY) -m deploy.local.servers

demo: .venv/.synced databases
	@bash deploy/local/services.sh redis || true
	$(PY) -m deploy.local.demo

test: .venv/.synced $(SECURITY_TOOLS)/.synced services databases
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/pytest tests --durations=25

bench: .venv/.synced services
	@command -v wrk >/dev/null || bash deploy/local/services.sh wrk
	@for b in $(filter-out %/bench_soak.py,$(wildcard tests/benchmarks/bench_*.py)); do echo "==> $$b"; $(PY) $$b; done

# The fault scenarios of tests/chaos/ at full length (make test runs them short), each printing its figures, then
# the processor's kill-and-replay and the 30-minute soak (docs/reliability.md).
chaos: .venv/.synced services databases
	@command -v wrk >/dev/null || bash deploy/local/services.sh wrk
	RTML_CHAOS=full .venv/bin/pytest -q -p no:cacheprovider tests/chaos
	$(PY) tests/benchmarks/bench_stream.py --phases recovery --events 200000 --kills 5
	$(PY) tests/benchmarks/bench_soak.py --minutes 30

# Every locked package (the project's, dev included, and the security tools') against PyPI's vulnerability data.
# --strict fails when a package cannot be audited (offline, PyPI's JSON API unreachable) instead of passing it by.
# Exceptions: deploy/security-tools/audit-exceptions.txt, one advisory id and its reason per line.
audit: $(SECURITY_TOOLS)/.synced
	@mkdir -p .rtml/audit
	$(UV) export --frozen --all-groups --no-emit-project --format requirements-txt -o .rtml/audit/project.txt -q
	$(UV) export --frozen --project deploy/security-tools --no-emit-project --format requirements-txt \
		-o .rtml/audit/security-tools.txt -q
	$(SECURITY_TOOLS)/bin/pip-audit --strict --disable-pip --progress-spinner off \
		$$(awk '!/^#/ && NF {print "--ignore-vuln", $$1}' deploy/security-tools/audit-exceptions.txt) \
		-r .rtml/audit/project.txt -r .rtml/audit/security-tools.txt

lint: .venv/.synced
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: .venv/.synced
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

clean:
	rm -rf .rtml/data .rtml/feast .rtml/mlflow .rtml/bentoml .rtml/profiles .rtml/reports
