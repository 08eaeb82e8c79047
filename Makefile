PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test demo reproduce gpu-check lint clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile tests

demo: venv
	$(PY) demo.py

reproduce: venv
	$(PY) reproduce.py

gpu-check: venv
	$(PY) benchmarks/gpu_check.py

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
