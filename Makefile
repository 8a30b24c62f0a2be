# Two commands (README "Quick start"):  make demo  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup chromium postgres clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (any other spec pulls GBs of CUDA wheels)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# offline assets of lm-eval's generative tasks: code_eval metric, NLTK punkt_tab (no Hub access)
	HF_HUB_OFFLINE=1 $(BIN)/python tests/fixtures/offline_assets.py
	touch $(STAMP)

setup: $(STAMP)

# the report is tested in a real headless Chromium (Debian package)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

# the store is tested on a real PostgreSQL server (Debian package); the tests start a throwaway
# cluster themselves: initdb + pg_ctl in a temp dir on 127.0.0.1 (as user postgres when root)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi; }

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/harness-xai demo --out demo --zoo zoo

test: $(STAMP) chromium postgres
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf demo zoo reports/out
