# gpuops.nvidia: `make demo` runs the main job, `make test` runs every test (what .ci/run calls).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COLLECTIONS := $(CURDIR)/.build/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/gpuops/nvidia
SANITY_ROOT := $(CURDIR)/.build/sanity/ansible_collections/gpuops/nvidia
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export PYTHONPATH := $(COLLECTIONS)

.PHONY: help venv collection-link test unit sanity lint build demo clean

help:
	@echo "make demo   - boot a simulated 8 x H100 node, converge playbooks/site.yml on it, print what it did"
	@echo "make test   - sanity, unit, lint and every Molecule scenario (what CI runs)"

$(BIN)/ansible: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/ansible

collection-link:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn $(CURDIR) $(COLLECTION_LINK)

unit: venv collection-link
	$(BIN)/python -m pytest -q tests/unit

# ansible-test needs the collection at .../ansible_collections/gpuops/nvidia: copy what git would ship.
sanity: venv
	rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_ROOT)
	git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents -d {} $(SANITY_ROOT)/ 2>/dev/null || true
	cd $(SANITY_ROOT) && git init -q && git add -A >/dev/null
	cd $(SANITY_ROOT) && PATH=$(CURDIR)/$(BIN):$$PATH PYENV_VERSION=$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(9|1[0-3])\.' | tr '\n' ':' | sed 's/:$$//') \
		$(CURDIR)/$(BIN)/ansible-test sanity --color=no --requirements

lint: venv collection-link
	$(BIN)/ansible-lint --profile production

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist

test: venv sanity unit lint molecule

clean:
	rm -rf .build

-include mk/*.mk
