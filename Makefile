# ganforge: `make run` runs it, `make test` tests it. Both set themselves up.
#
#   TORCH=torch==2.13.0   the torch requirement installed into a new .venv (default: the CPU
#                         build of 2.13.0, which pip takes from local wheels where present).
#                         Set TORCH=skip to keep whatever torch the venv already has.
#   TORCH_INDEX=URL       an extra pip --index-url for torch (e.g. a CPU or CUDA wheel index).
#   PYTHON=python3        the interpreter that creates the venv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.ganforge-installed
TORCH_CONSTRAINT := $(VENV)/torch-constraint.txt
RUN_DIR ?= var/runs/default

.PHONY: setup browser run train test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
	  echo "torch already in $(VENV): $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif [ "$(TORCH)" != "skip" ]; then \
	  $(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	@# Pin the torch now in the venv: a dependency that needs a matching package (torch-fidelity's
	@# torchvision) then gets the one built for this torch instead of pulling a newer torch.
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" >$(TORCH_CONSTRAINT) 2>/dev/null \
	  || : >$(TORCH_CONSTRAINT)
	$(PY) -m pip install --quiet -e '.[dev]' -c $(TORCH_CONSTRAINT)
	@touch $(STAMP)

# The service, embedded: SQLite + a SQLite-backed broker under ./var, the API on
# http://$(HOST):$(PORT)/ and $(WORKERS) worker process(es). Ctrl-C stops everything.
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

run: setup
	$(VENV)/bin/ganforge up --host $(HOST) --port $(PORT) --workers $(WORKERS)

# The training core alone, no service: the default recipe into $(RUN_DIR).
train: setup
	$(VENV)/bin/ganforge train examples/default.yaml --out $(RUN_DIR) --overwrite

# Browser tests drive Debian's Chromium; the /metrics tests use Debian's Prometheus server and
# its promtool. As root with apt-get, install them when missing.
CHROMIUM ?= /usr/bin/chromium
PROMETHEUS ?= /usr/bin/prometheus
browser:
	@test -x $(CHROMIUM) -a -x $(PROMETHEUS) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium prometheus >/dev/null \
	      || { apt-get update -q && apt-get install -y -q chromium prometheus; }; \
	  else echo "note: $(CHROMIUM) or $(PROMETHEUS) is missing; their tests skip (CI=true fails them)"; fi; }

test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy app worker
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/speed.py
	$(PY) bench/quality.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
