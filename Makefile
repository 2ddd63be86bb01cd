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

.PHONY: help venv collection-link test unit sanity lint build build-check demo clean

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
	@for v in $$(grep -ho "pip='[0-9.]*'" $(VENV)/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | cut -d"'" -f2); do \
		mkdir -p ~/.ansible/test/cache && cp .ci/get_pip_offline.py ~/.ansible/test/cache/get_pip_$${v//./_}.py; done
	rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_ROOT)
	git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents -d {} $(SANITY_ROOT)/ 2>/dev/null || true
	cd $(SANITY_ROOT) && git init -q && git add -A >/dev/null
	@mkdir -p .build/pythons && for v in 3.9 3.10 3.11 3.12 3.13; do \
		p=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python$$v 2>/dev/null | tail -n1); \
		if [ -n "$$p" ]; then ln -sfn "$$p" .build/pythons/python$$v; else echo "note: no Python $$v for multi-version sanity"; fi; done
	cd $(SANITY_ROOT) && PATH=$(CURDIR)/.build/pythons:$(CURDIR)/$(BIN):/usr/local/bin:/usr/bin:/bin \
		$(CURDIR)/$(BIN)/ansible-test sanity --color=no --requirements

# ansible-lint puts its cache's collections ($$ANSIBLE_HOME/collections, else ~/.ansible/collections) before
# ANSIBLE_COLLECTIONS_PATH: a cache in .build keeps any copy of gpuops.nvidia in the home from shadowing the checkout
# (.ansible-lint: offline, so nothing is installed there). The venv on PATH, as ansible-lint wants it.
lint: venv collection-link
	PATH=$(abspath $(BIN)):$$PATH ANSIBLE_HOME=$(CURDIR)/.build/ansible-lint $(BIN)/ansible-lint --profile production

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist

# The Galaxy tarball installs, and ansible-doc renders every module from the installed copy.
build-check: build
	rm -rf .build/installed
	$(BIN)/ansible-galaxy collection install --force -p .build/installed .build/dist/gpuops-nvidia-*.tar.gz
	cd /tmp && for m in $$(ls $(CURDIR)/plugins/modules | sed 's/\.py$$//'); do \
		env -u PYTHONPATH ANSIBLE_NOCOLOR=1 ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/.build/installed $(CURDIR)/$(BIN)/ansible-doc gpuops.nvidia.$$m \
			| grep -q "^> MODULE gpuops.nvidia.$$m" || { echo "ansible-doc gpuops.nvidia.$$m failed"; exit 1; }; \
		echo "ansible-doc gpuops.nvidia.$$m: renders from the installed copy"; done

test: venv sanity unit lint build-check molecule

clean:
	rm -rf .build

-include mk/*.mk
