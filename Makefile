# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap .venv first.
# The Python versions the test suite ran on (README: Install); TensorFlow 2.21 has none for 3.14.
SUPPORTED := 3.13 3.12 3.11
SUPPORTED_CHECK := import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The first supported interpreter that runs (a pyenv shim may exist and still refuse to run):
# python3.13, python3.12, python3.11, then python3 if it is one of them. `make PYTHON=...` overrides.
ifndef PYTHON
PYTHON := $(shell for p in $(addprefix python,$(SUPPORTED)) python3; do \
	$$p -c '$(SUPPORTED_CHECK)' >/dev/null 2>&1 && { command -v $$p; break; }; done)
endif

# A .venv made by an unsupported Python, or whose Python is gone or broken, is rebuilt.
ifneq ($(wildcard $(VENV)),)
ifneq ($(shell $(BIN)/python -c '$(SUPPORTED_CHECK)' >/dev/null 2>&1 && echo ok),ok)
.PHONY: $(STAMP)
endif
endif

.PHONY: test demo bench lock readme-assets clean

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "make: no Python 3.11, 3.12 or 3.13 found (TensorFlow 2.21 supports" \
		"3.10-3.13; this project 3.11-3.13). Install one, e.g. 'sudo apt install python3.12-venv'" \
		"or 'pyenv install 3.12', or name it: make PYTHON=/path/to/python3.12"; exit 1; }
	@if [ -e $(VENV) ] && ! $(BIN)/python -c '$(SUPPORTED_CHECK)' >/dev/null 2>&1; then \
		echo "$(VENV) was made by an unsupported or missing Python: rebuilding it with $(PYTHON)"; \
		rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[test,bench,dask]"
	touch $(STAMP)

# The suite in TEST_WORKERS processes (pytest-xdist): most tests keep one core busy, so 2 processes
# on 2 cores take about 15 min instead of 25. --dist loadfile keeps each file in one process (its
# module fixtures are built once); the session fixtures are built once per process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(BIN)/python cli.py demo --work-dir demo-work

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# The README's pictures and samples (docs/img/, docs/samples/) from a fresh demo run.
readme-assets: demo
	$(BIN)/python docs/make_readme_assets.py demo-work

lock: $(STAMP)
	{ sed -n '/^#/p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable | sort; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) demo-work bench/work
