# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run smoke test test-slow test-azureml-env ui clean

# torch is installed first, pinned to the CPU build, so that the dependency
# resolver does not pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,azure]"
	touch $@

# The Azure ML jobs' environment: conda.yml's pip section as it stands (the
# oldest supported mlflow, with azureml-mlflow). PyTorch's CPU index is not
# reachable here; this machine's package index serves the same +cpu wheel.
AML_VENV ?= .venv-azureml
$(AML_VENV)/.installed: conda.yml pyproject.toml $(VENV)/.installed
	$(PYTHON) -m venv $(AML_VENV)
	$(PY) -c 'import sys, yaml; pip = [d["pip"] for d in yaml.safe_load(open("conda.yml"))["dependencies"] if isinstance(d, dict)][0]; print("\n".join(r for r in pip if not r.startswith("-")))' > $(AML_VENV)/requirements.txt
	$(AML_VENV)/bin/python -m pip install --quiet -r $(AML_VENV)/requirements.txt "pytest>=9.0" "pytest-timeout>=2.4" "azure-identity>=1.27"
	$(AML_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

run: $(VENV)/.installed   ## tune PPO on CartPole-v1 with the embedded defaults
	$(PY) src/tune_ppo.py $(ARGS)

smoke: $(VENV)/.installed ## the same pipeline shrunk to check the wiring
	$(PY) src/tune_ppo.py --smoke $(ARGS)

test: $(VENV)/.installed  ## the default (fast) test suite
	$(PY) -m pytest -q $(ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(ARGS)

test-azureml-env: $(AML_VENV)/.installed  ## the tracking tests inside the Azure ML job environment
	$(AML_VENV)/bin/python -m pytest -q -m "azureml_env or not slow" tests/test_azureml_env.py \
		tests/test_record.py tests/test_secrets.py tests/test_pipeline.py $(ARGS)

ui: $(VENV)/.installed    ## browse the runs in the MLflow UI
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf mlruns mlartifacts mlflow.db pbtflow_results
