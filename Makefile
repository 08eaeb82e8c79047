PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test demo reproduce reproduce-fashion gpu-check lint clean fashion-data

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

# the claims on Fashion-MNIST (the files found as utils/fashion.py says): the CPU plan, or the GPU plan on CUDA
reproduce-fashion: venv
	$(PY) reproduce.py --model R20_Fashion

gpu-check: venv
	$(PY) benchmarks/gpu_check.py

# Fashion-MNIST's four .gz files from Debian's package dataset-fashion-mnist, without root:
# the package is downloaded and unpacked in a temporary folder, then the files copied to torchvision's layout.
FASHION_RAW ?= data/FashionMNIST/raw

fashion-data:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && apt-get download dataset-fashion-mnist) && \
	dpkg-deb -x "$$tmp"/dataset-fashion-mnist_*.deb "$$tmp/unpacked" && \
	mkdir -p "$(FASHION_RAW)" && \
	cp "$$tmp"/unpacked/usr/share/datasets/fashion-mnist/*-ubyte.gz "$(FASHION_RAW)/" && \
	ls "$(FASHION_RAW)"

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
