# Quick start:  make demo   (compress bundled MNIST test images with a bundled model, next to JPEG-XL,
#                            WebP, PNG, gzip and bz2 on the same images)
#               make test   (the test suite; CI runs this)
# Both bootstrap .venv from nothing. torch is pinned to the local CPU build here:
# an open range would pull several GB of CUDA packages.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test test-slow clean

$(BIN)/vaecompress: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/vaecompress

demo: venv
	$(BIN)/vaecompress demo

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
