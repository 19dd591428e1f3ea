# pad — `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.pad-installed
# make test runs the suite in this many pytest-xdist processes, a test file per process at a time
# (half the suite's time is waiting: subprocesses starting, servers, timeouts); 1 runs it in one.
# --no-loadscope-reorder: files go out in collection order, longest first (tests/conftest.py), not
# sorted by how many tests they hold (which sent the 4-minute gpu_check file out last)
TEST_WORKERS ?= 2
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: setup demo test bench clean

setup: osmesa $(STAMP)
	@echo "pad: set up (.venv with pad and its test extra, libOSMesa for headless rendering)."

# libOSMesa is the only system library pad needs for CPU rendering.
.PHONY: osmesa
osmesa:
	@if ldconfig -p 2>/dev/null | grep -q 'libOSMesa\.so'; then \
		true; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "pad: installing libosmesa6 with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null; \
	else \
		echo "pad: libOSMesa is missing; run: sudo apt-get update && sudo apt-get install -y libosmesa6" >&2; exit 1; \
	fi

# Headless Chromium for the browser test of the 3D views (tests/test_viewer_browser.py); that test
# is skipped, with this command, where it is missing. Debian's package: playwright drives it and
# never downloads a browser of its own.
.PHONY: chromium
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "pad: installing chromium with apt-get (for the browser test of the 3D views)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "pad: chromium is missing, the browser test will be skipped; to run it: sudo apt-get update && sudo apt-get install -y chromium" >&2; \
	fi

$(STAMP): setup.cfg pyproject.toml
	@echo "pad: installing into $(VENV) (torch, open_clip, pyrender, zarr, dask, ...)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/pad demo --workdir demo-work

test: setup chromium
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

bench: setup
	bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) *.egg-info demo-work bench-out
