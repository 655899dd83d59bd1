# Two entry points for a fresh clone: `make run` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Conversion source: a local HF checkpoint directory (HF_PATH) or a size in the HF cache (SIZE).
HF_PATH ?=
SIZE ?=
OUT ?= converted
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install run test test-all

$(VENV)/.installed: setup.cfg requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned exactly: its CPU wheel is what the constraint names.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The main job: convert an OPT checkpoint (HF_PATH=dir or SIZE=125m..66b) into OUT;
# with neither, convert a random-weight OPT-125m-shaped demo checkpoint and run it.
run: install
ifneq ($(HF_PATH),)
	$(PY) scripts/convert.py --hf_path '$(HF_PATH)' --out '$(OUT)'
else ifneq ($(SIZE),)
	$(PY) scripts/convert.py --size '$(SIZE)' --out '$(OUT)'
else
	$(PY) scripts/demo.py --out '$(OUT)'
endif

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m 'not slow' tests

test-all: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests
