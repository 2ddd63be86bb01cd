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
VERSION := $(shell sed -n 's/^version: *//p' galaxy.yml)
TARBALL := .build/dist/gpuops-nvidia-$(VERSION).tar.gz
INSTALLED := $(CURDIR)/.build/installed

.PHONY: help venv collection-link chromium test unit sanity lint build build-check demo clean shellcheck-tool ee docs-lint \
	changelog changelog-check

help:
	@echo "make demo   - boot a simulated 8 x H100 node, converge playbooks/site.yml on it, print what it did"
	@echo "make test   - sanity, unit, lint, docs-lint, changelog-check, build-check, ee and every Molecule scenario (what CI runs)"
	@echo "make ee     - execution environment build context (.build/ee; building the image needs podman or docker)"
	@echo "make changelog - regenerate CHANGELOG.md from changelogs/"

$(BIN)/ansible: requirements-dev.txt
	$(PYTHON) -m venv $(VENV) || { echo "installing python3-venv"; rm -rf $(VENV); \
		apt-get install -y python3-venv || { apt-get update && apt-get install -y python3-venv; }; \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/ansible

collection-link:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn $(CURDIR) $(COLLECTION_LINK)

# The GPU report's browser test (tests/unit/plugins/filter/test_gpu_report_browser.py) runs Debian's chromium
# headless: installed when missing, and required (not skipped) here.
chromium:
	@command -v chromium >/dev/null || { echo "installing chromium for the GPU report's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; }

unit: venv collection-link chromium
	GPUOPS_REQUIRE_CHROMIUM=1 $(BIN)/python -m pytest -q tests/unit

# ansible-test's shellcheck sanity test is skipped when shellcheck is missing: install it (Debian/Ubuntu).
shellcheck-tool:
	@command -v shellcheck >/dev/null || { echo "installing: shellcheck"; \
		apt-get install -y shellcheck || { apt-get update && apt-get install -y shellcheck; }; }

# ansible-test needs the collection at .../ansible_collections/gpuops/nvidia: copy what git would ship.
sanity: venv shellcheck-tool
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

# The Galaxy tarball installs, ansible-doc renders every module from the installed copy, and a playbook of the
# installed copy runs with nothing else on the collections path: gpuops.nvidia.mig_reconfigure, in check mode on
# localhost against simulated GPUs (the NVML simulator under the venv's pynvml, through a sitecustomize hook); it
# plans the change with nvidia_mig and runs the mig role from the tarball.
BUILD_CHECK_SIM := $(CURDIR)/.build/build-check-sim
build-check: build
	rm -rf $(INSTALLED)
	$(BIN)/ansible-galaxy collection install --force -p $(INSTALLED) $(TARBALL)
	cd /tmp && for m in $$(ls $(CURDIR)/plugins/modules | sed 's/\.py$$//'); do \
		env -u PYTHONPATH ANSIBLE_NOCOLOR=1 ANSIBLE_COLLECTIONS_PATH=$(INSTALLED) $(CURDIR)/$(BIN)/ansible-doc gpuops.nvidia.$$m \
			| grep -q "^> MODULE gpuops.nvidia.$$m" || { echo "ansible-doc gpuops.nvidia.$$m failed"; exit 1; }; \
		echo "ansible-doc gpuops.nvidia.$$m: renders from the installed copy"; done
	cd /tmp && env -u PYTHONPATH ANSIBLE_COLLECTIONS_PATH=$(INSTALLED) $(CURDIR)/$(BIN)/ansible-playbook --syntax-check \
		gpuops.nvidia.site gpuops.nvidia.mig_reconfigure
	rm -rf $(BUILD_CHECK_SIM) && mkdir -p $(BUILD_CHECK_SIM)/hook
	printf 'import gpuops_nvml_sim\ngpuops_nvml_sim.activate_from_environment()\n' > $(BUILD_CHECK_SIM)/hook/sitecustomize.py
	PYTHONPATH=tests/simulator $(BIN)/python -m gpuops_nvml_sim --state $(BUILD_CHECK_SIM)/state.json create --gpus h100-80gb:2
	cd /tmp && env PYTHONPATH=$(BUILD_CHECK_SIM)/hook:$(CURDIR)/tests/simulator GPUOPS_NVML_SIM_STATE=$(BUILD_CHECK_SIM)/state.json \
		ANSIBLE_COLLECTIONS_PATH=$(INSTALLED) ANSIBLE_NOCOLOR=1 ANSIBLE_STDOUT_CALLBACK=ansible.builtin.default \
		$(CURDIR)/$(BIN)/ansible-playbook --check -i localhost, -c local -e ansible_python_interpreter=$(CURDIR)/$(BIN)/python \
		-e ansible_become=false -e gpuops_mig_hosts=localhost -e '{"mig_layout": {"3g.40gb": 2}}' \
		gpuops.nvidia.mig_reconfigure > $(BUILD_CHECK_SIM)/run.log \
		|| { tail -n 40 $(BUILD_CHECK_SIM)/run.log; exit 1; }
	grep -q '"localhost: GPUs would be reconfigured (check mode)"' $(BUILD_CHECK_SIM)/run.log \
		|| { tail -n 40 $(BUILD_CHECK_SIM)/run.log; echo "gpuops.nvidia.mig_reconfigure did not plan the change"; exit 1; }
	@echo "gpuops.nvidia.mig_reconfigure: runs from the installed copy (check mode, simulated GPUs)"

# Execution environment: the build context (Containerfile and what it copies) that `ansible-builder build` turns
# into an image with a container engine (podman/docker; not needed here). The collection's own dependencies,
# requirements.txt and bindep.txt, must be found by ansible-builder's introspection of the installed tarball.
EE_DIR := $(CURDIR)/.build/ee
ee: build
	rm -rf $(EE_DIR) .build/ee-dist .build/ee-collections && mkdir -p .build/ee-dist
	cp $(TARBALL) .build/ee-dist/gpuops-nvidia.tar.gz
	$(BIN)/ansible-builder create --file execution-environment.yml --context $(EE_DIR) --output-filename Containerfile
	$(BIN)/ansible-galaxy collection install --force -p .build/ee-collections .build/ee-dist/gpuops-nvidia.tar.gz >/dev/null
	$(BIN)/ansible-builder introspect .build/ee-collections > .build/ee-introspect.txt
	@grep -q "^- 'nvidia-ml-py" .build/ee-introspect.txt && grep -q "^- 'openssh-client \\[platform:dpkg\\]" .build/ee-introspect.txt \
		|| { cat .build/ee-introspect.txt; echo "ansible-builder does not find the collection's dependencies"; exit 1; }
	@echo "EE build context: $(EE_DIR)/Containerfile; ansible-builder finds in the collection:"; sed -n 's/^/  /p' .build/ee-introspect.txt | grep -v '^  #'

# antsibull-docs' collection linter: module/plugin docs (--plugin-docs: also as docs.ansible.com renders them), role
# argument specs, docs/docsite links.
docs-lint: venv collection-link
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/antsibull-docs lint-collection-docs --plugin-docs $(COLLECTION_LINK)

# CHANGELOG.md is antsibull-changelog's rendering of changelogs/changelog.yaml plus the pending fragments as the
# release of galaxy.yml's version. `antsibull-changelog release` consumes fragments and records the release, so it
# runs on a copy of the files git tracks (a new fragment counts once it is `git add`ed, as in a clean clone);
# `make changelog` writes CHANGELOG.md, changelog-check (make test) lints the fragments and fails when CHANGELOG.md
# is not what they give. A real release runs `antsibull-changelog release` in the checkout (docs/ecosystem.md).
CHANGELOG_COPY := $(CURDIR)/.build/changelog/ansible_collections/gpuops/nvidia
define render_changelog
	rm -rf $(CURDIR)/.build/changelog && mkdir -p $(CHANGELOG_COPY)
	git ls-files -z --cached | xargs -0 -I{} cp --parents -d {} $(CHANGELOG_COPY)/ 2>/dev/null || true
	cd $(CHANGELOG_COPY) && PATH=$(abspath $(BIN)):$$PATH ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/.build/changelog \
		$(CURDIR)/$(BIN)/antsibull-changelog release --version $(VERSION) 2>&1 | { grep -v '^\[WARNING\]' || true; }
endef
changelog: venv
	$(render_changelog)
	cp $(CHANGELOG_COPY)/CHANGELOG.md CHANGELOG.md

changelog-check: venv
	$(BIN)/antsibull-changelog lint
	$(render_changelog)
	@cmp -s $(CHANGELOG_COPY)/CHANGELOG.md CHANGELOG.md || { diff -u CHANGELOG.md $(CHANGELOG_COPY)/CHANGELOG.md | head -n 40; \
		echo "CHANGELOG.md is not what changelogs/ gives: run make changelog"; exit 1; }
	@echo "CHANGELOG.md: up to date with changelogs/"

test: venv sanity unit lint docs-lint changelog-check build-check ee molecule

clean:
	rm -rf .build

-include mk/*.mk
