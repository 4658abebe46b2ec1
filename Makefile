# Two entry points for a newcomer: `make run` (the whole system with a demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean fuse browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,load]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/stockgate demo

# The suites that run a second time against a local Redis Cluster (3 primaries, 3 replicas):
# same tests, RedisCluster client, tenants on every primary (tests/conftest.py).
CLUSTER_SUITE := tests/test_scripts.py tests/test_concurrency.py tests/test_gateway_holds.py \
	tests/test_gateway_webhooks.py tests/test_workers_e2e.py tests/test_flash_sale.py \
	tests/test_console_api.py

test: $(STAMP) fuse browser
	$(BIN)/ruff check .
	$(BIN)/pytest
	STOCKGATE_TEST_CLUSTER=1 $(BIN)/pytest $(CLUSTER_SUITE)

# The power-loss test (tests/test_power_loss.py) mounts a FUSE filesystem over libfuse, found
# the way mfusepy finds it. CI runs as root on Debian: install fuse3 there when it is missing.
# Anyone else is left alone, and the test skips with its reason (it fails if CI is set).
HAS_LIBFUSE := from ctypes.util import find_library as f; raise SystemExit(not (f("fuse") or f("fuse3")))
fuse:
	@if [ "$$(id -u)" = 0 ] && ! $(PYTHON) -c '$(HAS_LIBFUSE)' && command -v apt-get >/dev/null; then \
		echo "installing fuse3 (libfuse 3) for the power-loss test"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fuse3; } \
		|| echo "could not install fuse3: the power-loss test will skip, or fail if CI is set"; \
	fi

# The console's browser tests drive a headless Chromium through Playwright with the system's
# browser (tests/browser_support.py), so no `playwright install` download. CI runs as root on
# Debian: install Debian's chromium there when none is on PATH. Without recommends (no fonts-
# liberation, upower, notification daemons) it still renders headless: fontconfig pulls a font.
# Anyone else is left alone, and the browser tests skip with their reason (fail if CI is set).
HAS_CHROMIUM := command -v chromium || command -v chromium-browser || command -v google-chrome
browser:
	@if [ "$$(id -u)" = 0 ] && [ -z "$$CHROMIUM" ] && ! { $(HAS_CHROMIUM); } >/dev/null \
			&& command -v apt-get >/dev/null; then \
		echo "installing chromium (Debian's) for the console's browser tests"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium >/dev/null; } \
		|| echo "could not install chromium: the browser tests will skip, or fail if CI is set"; \
	fi

bench: $(STAMP)
	$(BIN)/python -m benchmarks.lua

clean:
	rm -rf $(VENV) .stockgate
