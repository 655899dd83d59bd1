# Two entry points for a fresh clone: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Conversion source (make convert): a local HF checkpoint directory (HF_PATH) or a size in the HF cache (SIZE).
HF_PATH ?=
SIZE ?=
CONVERTED ?= converted
# The main job's output directory and extra flags for scripts/study.py (e.g. ARGS="--model converted/opt-125m").
OUT ?= out
ARGS ?=
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install browser run convert test test-real test-install test-all

$(VENV)/.installed: setup.cfg requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned exactly: its CPU wheel is what the constraint names.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The atlas page's tests drive Debian's headless Chromium with Selenium (no browser download): installed
# with apt-get when missing (as root), else a clear error.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make browser: installing Debian's chromium and chromium-driver"; \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } >/dev/null \
			|| { echo "make browser: apt-get could not install chromium chromium-driver" >&2; exit 1; }; \
	else \
		echo "make browser: the atlas tests need /usr/bin/chromium and /usr/bin/chromedriver;" \
			"run 'apt-get install -y chromium chromium-driver' as root" >&2; exit 1; \
	fi

# The main job: collect statistics of the shipped trained twins on the Python standard library and write
# the study's report, figures and tables into OUT/report (a few minutes on 2 cores).
run: install
	$(PY) scripts/study.py --out '$(OUT)' $(ARGS)

# Convert an OPT checkpoint (HF_PATH=dir or SIZE=125m..66b) into CONVERTED.
convert: install
ifneq ($(HF_PATH),)
	$(PY) scripts/convert.py --hf_path '$(HF_PATH)' --out '$(CONVERTED)'
else ifneq ($(SIZE),)
	$(PY) scripts/convert.py --size '$(SIZE)' --out '$(CONVERTED)'
else
	@echo "make convert needs HF_PATH=dir or SIZE=125m..66b" && exit 2
endif

# The suite runs on TEST_WORKERS processes (pytest-xdist; a test file stays in one process): about 9 minutes
# on 2 cores with 2, 15 with 1. Each worker peaks near 4 GB.
TEST_WORKERS ?= 2

test: install browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m 'not slow and not real and not install' tests

# The pipeline at OPT's real dimensions (125m, 350m, 66b widths): about 15 minutes, up to ~18 GB of memory.
test-real: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -s -m real tests

# Installing into a researcher's environment: `pip install --dry-run` of '.', '.[cuda12]', '.[cuda13]' and
# '.[torch]' in a fresh venv, against the package index (a few minutes; needs the index, not a GPU).
test-install: install
	$(PY) -m pytest -q -m install tests/test_install.py

test-all: install browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m 'not install' tests
