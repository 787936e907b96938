# Both targets create .venv with pip when it is missing, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the releases that lie on this machine's disk (see README).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-slow bench clean

$(BIN)/mlenv: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/mlenv

demo: $(BIN)/mlenv
	$(BIN)/mlenv demo

test: $(BIN)/mlenv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

# The slow tier: multi-process launches (torchrun, sweep workers, kills and resumes) and real
# recipes end to end. CI runs it after `make test`.
test-slow: $(BIN)/mlenv
	$(BIN)/python -m pytest -q -m slow

# Side-by-side measurements (minutes, not a test); each writes benchmarks/results/<name>.json.
bench: $(BIN)/mlenv
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/trainer_overhead.py
	$(BIN)/python benchmarks/threads.py
	$(BIN)/python benchmarks/tabular.py
	$(BIN)/python benchmarks/gmm.py

clean:
	rm -rf $(VENV) build src/*.egg-info
