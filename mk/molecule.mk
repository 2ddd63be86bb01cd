# Molecule harness targets (included by the main Makefile, which defines PYTHON, VENV, BIN, venv,
# collection-link). Scenarios: every extensions/molecule/<name>/molecule.yml (Molecule's layout for a
# collection), each merged over the base config extensions/molecule/config.yml (gpu/ runs on GPU runners only:
# tests/hardware/molecule_gpu.sh); default/ is a stub Molecule
# looks for (not a test), shared/ holds the create/destroy/check-mode playbooks.
MOLECULE_DIR := extensions/molecule
MOLECULE_BASE_CONFIG := $(MOLECULE_DIR)/config.yml
MOLECULE_SCENARIOS := $(sort $(filter-out default gpu,$(notdir $(patsubst %/molecule.yml,%,$(wildcard $(MOLECULE_DIR)/*/molecule.yml)))))
# Simulated GPU nodes (nspawn boot, simulator, stand-ins): shared by the scenarios and `make demo`.
NODE_DIR := tests/nodes
NODE_SCRIPT := $(NODE_DIR)/gpuops_node.py
DEMO_DIR := $(CURDIR)/.build/demo
DEMO_NODE := $(DEMO_DIR)/gpu-node-1
DEMO_RELEASE ?= bookworm
DEMO_GPUS ?= h100-80gb:8
KEEP ?=
# Molecule and its ansible-* children come from the venv. The scenario glob and the base config are named
# explicitly, so a leftover molecule/ directory (e.g. __pycache__ of an old checkout) or a
# ~/.config/molecule/config.yml cannot change what runs.
MOLECULE := PATH=$(abspath $(BIN)):$$PATH MOLECULE_GLOB='$(MOLECULE_DIR)/*/molecule.yml' \
	molecule --base-config $(MOLECULE_BASE_CONFIG)

.PHONY: molecule molecule-clean nspawn-tools $(addprefix molecule-,$(MOLECULE_SCENARIOS)) demo demo-destroy

# debootstrap and systemd-nspawn on the controller (Debian/Ubuntu).
nspawn-tools:
	@missing=""; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v systemd-nspawn >/dev/null || missing="$$missing systemd-container"; \
	command -v nsenter >/dev/null || missing="$$missing util-linux"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get install -y $$missing || { apt-get update && apt-get install -y $$missing; }; \
	fi

# Every scenario, one after the other; stops at the first failure.
molecule: venv collection-link nspawn-tools
	@for s in $(MOLECULE_SCENARIOS); do \
		echo "=== molecule test -s $$s"; \
		start=$$(date +%s); \
		$(MOLECULE) test -s $$s || { echo "=== molecule scenario $$s FAILED"; exit 1; }; \
		echo "=== molecule scenario $$s passed in $$(( $$(date +%s) - start ))s"; \
	done

$(addprefix molecule-,$(MOLECULE_SCENARIOS)): molecule-%: venv collection-link nspawn-tools
	$(MOLECULE) test -s $*

# Leak cleanup: destroys every nspawn node the harness cache knows about (all scenarios, demo).
molecule-clean:
	$(PYTHON) $(NODE_SCRIPT) destroy-all

# Boot one simulated node (8 x H100 80GB), converge playbooks/site.yml on it over SSH, print the GPUs,
# tear it down (KEEP=1 keeps it).
demo: venv collection-link nspawn-tools
	@set -euo pipefail; \
	mkdir -p $(DEMO_DIR); \
	teardown() { if [ -z "$(KEEP)" ]; then $(BIN)/python $(NODE_SCRIPT) destroy --dir $(DEMO_NODE) >/dev/null && echo "demo node destroyed"; fi; }; \
	trap teardown EXIT; \
	start=$$(date +%s); \
	$(BIN)/python $(NODE_SCRIPT) create --dir $(DEMO_NODE) --name gpu-node-1 --release $(DEMO_RELEASE) >/dev/null; \
	$(BIN)/python $(NODE_SCRIPT) inventory --dir $(DEMO_NODE) > $(DEMO_DIR)/inventory.ini; \
	echo "booted gpu-node-1 ($(DEMO_RELEASE)) in $$(( $$(date +%s) - start ))s"; \
	$(BIN)/ansible-playbook -i $(DEMO_DIR)/inventory.ini $(NODE_DIR)/prepare.yml -e gpuops_gpus=$(DEMO_GPUS) >$(DEMO_DIR)/prepare.log \
		|| { tail -n 40 $(DEMO_DIR)/prepare.log; exit 1; }; \
	$(BIN)/ansible-playbook -i $(DEMO_DIR)/inventory.ini playbooks/site.yml -e @playbooks/vars/demo.yml; \
	echo "=== second run (must change nothing)"; \
	$(BIN)/ansible-playbook -i $(DEMO_DIR)/inventory.ini playbooks/site.yml -e @playbooks/vars/demo.yml > $(DEMO_DIR)/second-run.log \
		|| { tail -n 40 $(DEMO_DIR)/second-run.log; exit 1; }; \
	grep -A2 "PLAY RECAP" $(DEMO_DIR)/second-run.log; \
	grep -q "changed=0" $(DEMO_DIR)/second-run.log || { echo "second run changed something"; exit 1; }; \
	if [ -n "$(KEEP)" ]; then \
		echo; echo "node kept. log in:  $$($(BIN)/python -c 'import json,sys; print(" ".join(json.load(sys.stdin)["ssh"]))' < <($(BIN)/python $(NODE_SCRIPT) ssh-command --dir $(DEMO_NODE)))"; \
		echo "inventory:          $(DEMO_DIR)/inventory.ini"; \
		echo "destroy it:         make demo-destroy"; \
	fi

demo-destroy:
	$(PYTHON) $(NODE_SCRIPT) destroy --dir $(DEMO_NODE)
