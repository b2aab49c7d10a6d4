# The two commands of the README contract: `make demo` and `make test`.
# Each creates .venv and installs what it needs, idempotently.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt scripts/install_code_server.sh scripts/install_netns_tools.sh scripts/apt_install.sh 2>/dev/null | sha1sum | cut -c1-12)

VSIX := fi_dist/editor/fi-dist.vsix
EXTENSION_SRC := $(wildcard fi_dist/editor/extension/*) fi_dist/editor/extension/.vscodeignore
NODE_TOOLS := node-tools/node_modules/.package-lock.json

.PHONY: setup browser-setup demo test lint bench clean

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

# npm build and test tools at the versions node-tools/package-lock.json pins.
$(NODE_TOOLS): node-tools/package-lock.json scripts/install_node_tools.sh
	bash scripts/install_node_tools.sh

# fi-dist's VSCode extension, packed once; it ships in the package and installs offline.
$(VSIX): $(EXTENSION_SRC) $(NODE_TOOLS) scripts/build_extension.sh
	bash scripts/build_extension.sh

setup: $(STAMP) $(VSIX)

# The browser test: Debian's chromium (apt) driven by playwright-core (node-tools/).
browser-setup: setup
	bash scripts/install_browser.sh

demo: setup
	@echo "fi-dist demo: a 2-node x 2-rank --debug job with the browser IDE on node 0."
	@echo "  Browser: open the code-server URL the job prints (password file named there), then"
	@echo "           Run and Debug -> 'fi-dist: attach all ranks' (the fi-dist extension is installed)."
	@echo "  Desktop VSCode: '$(BIN)/fi-dist vscode install' once, open this folder, then Run and"
	@echo "           Debug -> 'fi-dist: attach all ranks' (written to .vscode/launch.json)."
	$(BIN)/fi-dist run --debug --code-server --nnodes 2 --nproc-per-node 2 examples/ddp_train.py -- --steps 200 --step-sleep 0.1

test: browser-setup
	$(BIN)/ruff check fi_dist launchers tests bench examples
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -v -p no:cacheprovider --durations=25 tests

lint: setup
	$(BIN)/ruff check fi_dist launchers tests bench examples
	$(BIN)/python -m mypy

bench: setup
	$(BIN)/python bench/launch_bench.py

clean:
	rm -rf $(VENV) .fi-dist $(VSIX) node-tools/node_modules
