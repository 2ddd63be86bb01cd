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

.PHONY: molecule molecule-all molecule-clean nspawn-tools $(addprefix molecule-,$(MOLECULE_SCENARIOS)) demo demo-destroy

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

# The scenarios `make test` (CI) runs: every scenario but the GPU-only one. driver (real Debian driver packages and
# DKMS builds) is the longest: a full `make test` on a fresh clone with an empty node cache took 31 min on 2 cores
# (driver 610 s), against CI's 90.
# `make test MOLECULE_CI_SCENARIOS="mig mps"` runs fewer.
MOLECULE_CI_SCENARIOS ?= badinput smoke persistenced mig mps nvshare mig_reconfigure driver

# The CI scenarios, one after the other; stops at the first failure.
molecule: venv collection-link nspawn-tools
	@for s in $(MOLECULE_CI_SCENARIOS); do \
		echo "=== molecule test -s $$s"; \
		start=$$(date +%s); \
		$(MOLECULE) test -s $$s || { echo "=== molecule scenario $$s FAILED"; exit 1; }; \
		echo "=== molecule scenario $$s passed in $$(( $$(date +%s) - start ))s"; \
	done

# Every scenario.
molecule-all:
	$(MAKE) molecule MOLECULE_CI_SCENARIOS="$(MOLECULE_SCENARIOS)"

$(addprefix molecule-,$(MOLECULE_SCENARIOS)): molecule-%: venv collection-link nspawn-tools
	$(MOLECULE) test -s $*

# Leak cleanup: destroys every nspawn node the harness cache knows about (all scenarios, demo).
molecule-clean:
	$(PYTHON) $(NODE_SCRIPT) destroy-all

# The demo, as a new user sees it: boot one simulated node (8 x H100 80GB, nspawn), put it in the example
# inventory's Slurm group, show what it is asked, converge playbooks/site.yml, write the GPU report, converge again
# (must change nothing), tear the node down (KEEP=1 keeps it). Each stage says what it does and how long it took.
DEMO_GROUP ?= slurm_gpu_nodes
DEMO_REPORT_DIR := $(DEMO_DIR)/gpu-report
DEMO_ANSIBLE := ANSIBLE_DISPLAY_SKIPPED_HOSTS=false ANSIBLE_CALLBACK_RESULT_FORMAT=yaml $(BIN)/ansible-playbook \
	-i inventory/example -i $(DEMO_DIR)/inventory.ini --limit gpu-node-1 -e @playbooks/vars/demo.yml
demo: venv collection-link nspawn-tools
	@set -euo pipefail; \
	t0=$$(date +%s); \
	stage() { echo; echo "=== [$$(( $$(date +%s) - t0 ))s] $$*"; }; \
	mkdir -p $(DEMO_DIR); \
	teardown() { if [ -z "$(KEEP)" ]; then $(BIN)/python $(NODE_SCRIPT) destroy --dir $(DEMO_NODE) >/dev/null \
		&& echo "=== [$$(( $$(date +%s) - t0 ))s] demo node gpu-node-1 destroyed (make demo KEEP=1 keeps it)"; fi; }; \
	trap teardown EXIT; \
	if [ -e $(DEMO_NODE) ]; then $(BIN)/python $(NODE_SCRIPT) destroy --dir $(DEMO_NODE) >/dev/null; \
		echo "removed the node a previous demo kept"; fi; \
	stage "1/6 booting gpu-node-1: a Debian $(DEMO_RELEASE) systemd-nspawn container on this machine, reached over SSH" \
		"(the first run builds and caches its root filesystem, which takes a few minutes)"; \
	$(BIN)/python $(NODE_SCRIPT) create --dir $(DEMO_NODE) --name gpu-node-1 --release $(DEMO_RELEASE) >/dev/null; \
	{ echo "[$(DEMO_GROUP)]"; $(BIN)/python $(NODE_SCRIPT) inventory --dir $(DEMO_NODE); } > $(DEMO_DIR)/inventory.ini; \
	stage "2/6 SIMULATED GPUs: this machine has no GPU and no NVIDIA driver. gpu-node-1 gets $(DEMO_GPUS) GPUs from" \
		"the NVML simulator (pynvml on the node talks to it) and stand-ins for nvidia-smi, nvidia-persistenced and" \
		"nvidia-cuda-mps-control; the driver counts as installed (the driver role is switched off)"; \
	$(BIN)/ansible-playbook -i $(DEMO_DIR)/inventory.ini $(NODE_DIR)/prepare.yml -e gpuops_gpus=$(DEMO_GPUS) >$(DEMO_DIR)/prepare.log \
		|| { tail -n 40 $(DEMO_DIR)/prepare.log; exit 1; }; \
	grep -o "gpu-node-1: [0-9]* simulated GPU(s) ([^)]*)" $(DEMO_DIR)/prepare.log || true; \
	stage "3/6 what site.yml is asked to do: gpu-node-1 is in group $(DEMO_GROUP) of inventory/example"; \
	for f in inventory/example/group_vars/gpu_nodes.yml inventory/example/group_vars/$(DEMO_GROUP).yml playbooks/vars/demo.yml; do \
		echo "--- $$f"; grep -v -e '^ *#' -e '^---$$' -e '^$$' $$f | sed 's/^/    /'; done; \
	echo "    (demo.yml is given with -e and wins over the inventory)"; \
	stage "4/6 converging playbooks/site.yml on gpu-node-1 (driver off, persistenced, MIG, MPS; nvshare off)"; \
	$(DEMO_ANSIBLE) playbooks/site.yml | tee $(DEMO_DIR)/site-run.log; \
	stage "5/6 the GPU report: playbooks/gpu_report.yml reads the node back and compares it with the inventory"; \
	$(DEMO_ANSIBLE) playbooks/gpu_report.yml -e gpuops_report_dir=$(DEMO_REPORT_DIR) > $(DEMO_DIR)/report-run.log \
		|| { tail -n 60 $(DEMO_DIR)/report-run.log; exit 1; }; \
	sed -n '/^TASK \[Say where the report is\]/,/^$$/p' $(DEMO_DIR)/report-run.log | grep -v '^TASK' ; \
	stage "6/6 second run of site.yml: must change nothing"; \
	$(DEMO_ANSIBLE) playbooks/site.yml > $(DEMO_DIR)/second-run.log || { tail -n 40 $(DEMO_DIR)/second-run.log; exit 1; }; \
	grep -A2 "PLAY RECAP" $(DEMO_DIR)/second-run.log; \
	grep -Eq "gpu-node-1 +: ok=[0-9]+ +changed=0 .*failed=0" $(DEMO_DIR)/second-run.log \
		|| { echo "the second run changed something (log: $(DEMO_DIR)/second-run.log)"; exit 1; }; \
	echo; echo "=== [$$(( $$(date +%s) - t0 ))s] done: second run changed=0"; \
	echo "GPU report:  $(DEMO_REPORT_DIR)/gpu-report.html (file://$(DEMO_REPORT_DIR)/gpu-report.html)"; \
	echo "Markdown:    $(DEMO_REPORT_DIR)/gpu-report.md"; \
	echo "logs:        $(DEMO_DIR)/{prepare,site-run,report-run,second-run}.log"; \
	if [ -n "$(KEEP)" ]; then \
		echo "node kept. log in:  $$($(BIN)/python -c 'import json,sys; print(" ".join(json.load(sys.stdin)["ssh"]))' < <($(BIN)/python $(NODE_SCRIPT) ssh-command --dir $(DEMO_NODE)))"; \
		echo "inventory:          -i inventory/example -i $(DEMO_DIR)/inventory.ini --limit gpu-node-1 -e @playbooks/vars/demo.yml"; \
		echo "destroy it:         make demo-destroy"; \
	fi

demo-destroy:
	$(PYTHON) $(NODE_SCRIPT) destroy --dir $(DEMO_NODE)
