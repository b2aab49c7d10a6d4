# The two commands of the README contract: `make demo` and `make test`.
# Each creates .venv and installs what it needs, idempotently.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt scripts/install_code_server.sh scripts/install_netns_tools.sh 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: setup demo test lint bench clean

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first, so nothing later pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# constraints.txt pins every dependency to a set known to work together: no resolver
	# backtracking, the same versions on every machine.
	$(BIN)/pip install -q -c constraints.txt -e '.[all,test]'
	bash scripts/install_code_server.sh  # code-server 4.100.3 from npm into .tools/ (docs/flyte.md)
	bash scripts/install_netns_tools.sh  # ip, tc, nsenter for --network netns (docs/launchers.md)
	rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/fi-dist run --debug --nnodes 2 --nproc-per-node 2 examples/ddp_train.py -- --steps 200 --step-sleep 0.1

test: setup
	$(BIN)/ruff check fi_dist launchers tests bench examples
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -v -p no:cacheprovider --durations=25 tests

lint: setup
	$(BIN)/ruff check fi_dist launchers tests bench examples
	$(BIN)/python -m mypy

bench: setup
	$(BIN)/python bench/launch_bench.py

clean:
	rm -rf $(VENV) .fi-dist
