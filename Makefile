# make run   - set up .venv and run the daemon on the default config (./sentimon.toml if present)
# make test  - set up .venv and run the test suite
# make demo  - the offline demo against bundled real captures
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# llama.cpp's worker threads sleep instead of spinning while they wait (much faster on a busy small machine)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install run test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: install
	$(BIN)/sentimon run

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/sentimon demo

bench: install
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.model
	$(BIN)/python -m bench.train
	$(BIN)/python -m bench.quality

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
