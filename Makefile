# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run smoke test test-slow ui clean

# torch is installed first, pinned to the CPU build, so that the dependency
# resolver does not pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,azure]"
	touch $@

run: $(VENV)/.installed   ## tune PPO on CartPole-v1 with the embedded defaults
	$(PY) src/tune_ppo.py $(ARGS)

smoke: $(VENV)/.installed ## the same pipeline shrunk to check the wiring
	$(PY) src/tune_ppo.py --smoke $(ARGS)

test: $(VENV)/.installed  ## the default (fast) test suite
	$(PY) -m pytest -q $(ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(ARGS)

ui: $(VENV)/.installed    ## browse the runs in the MLflow UI
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf mlruns mlartifacts mlflow.db pbtflow_results
