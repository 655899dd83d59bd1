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

.PHONY: install run convert test test-real test-all

$(VENV)/.installed: setup.cfg requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned exactly: its CPU wheel is what the constraint names.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $@

install: $(VENV)/.installed

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

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m 'not slow and not real' tests

# The pipeline at OPT's real dimensions (125m, 350m, 66b widths): about 15 minutes, up to ~18 GB of memory.
test-real: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -s -m real tests

test-all: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests
