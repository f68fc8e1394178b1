# The two commands of the README. Each installs what it needs on a fresh Debian machine (root, pyenv Pythons).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RESULTS := benchmarks/results

.PHONY: test bench redis-server

# Debian's redis-server, installed when missing; the tests and benchmarks start their own servers on 127.0.0.1.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing redis-server with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install redis-server) and re-run." >&2; \
	    exit 1; \
	  fi; }

$(BIN)/activate: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q tox -e '.[bench]'
	touch $@

# The whole test suite on Python 3.10-3.13, plus ruff and mypy --strict.
test: redis-server $(BIN)/activate
	$(BIN)/tox run

# The benchmarks (the main job): the paced before/after logging comparison, the hot path against raw redis-py, threads,
# (interleaved), outage figures, the counters' cost, Sentinel failover figures, the Flask load test against
# Flask-Session, the lock against redis-py's and python-redis-lock's (round trips, hand-off between processes), the
# context cache against redis-py's client-side cache (hits, invalidation between processes, single flight, compression,
# the byte bound), then pytest-benchmark (including the cluster against standalone).
# Tables on the terminal; JSON, the chart and the log under benchmarks/results/. REDIS_URL: use that server instead.
bench: redis-server $(BIN)/activate
	mkdir -p $(RESULTS)
	$(BIN)/python -m benchmarks.paced --out $(RESULTS)
	$(BIN)/python -m benchmarks.hot_path --out $(RESULTS)
	$(BIN)/python -m benchmarks.threads --out $(RESULTS)
	$(BIN)/python -m benchmarks.outage --out $(RESULTS)
	$(BIN)/python -m benchmarks.counters --out $(RESULTS)
	$(BIN)/python -m benchmarks.failover --out $(RESULTS)
	$(BIN)/python -m benchmarks.web --out $(RESULTS)
	$(BIN)/python -m benchmarks.lock --out $(RESULTS)
	$(BIN)/python -m benchmarks.context_cache --out $(RESULTS)
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only --benchmark-columns=min,median,iqr,ops,rounds \
	  --benchmark-json=$(RESULTS)/benchmarks.json
