#!/usr/bin/env bash
# Evidence for gpuops.nvidia.nvidia_persistence on a real GPU node, READ-ONLY for persistence.
#
# On the reference H100 persistence mode is ENABLED through the legacy flag and no nvidia-persistenced runs.
# This script NEVER changes it: it only runs the module
#   1. in check mode with state: enabled (predicts no change), and
#   2. for real with state: enabled while every GPU is already enabled (a no-op: desired == current),
# and refuses step 2 if any GPU reads disabled, so that nothing can be written.
# Assumes ansible-core and the gpuops.nvidia collection are installed (ANSIBLE_COLLECTIONS_PATH) and
# nvidia-ml-py is importable by the Python Ansible uses on localhost.
#
# Usage: sudo tests/hardware/persistence_check.sh [OUTPUT_DIR]    (root: NVML reads work unprivileged too,
#        but the no-op step is only meaningful as the user the role would run as)
set -euo pipefail

OUT="${1:-${OUT:-persistence-evidence-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$OUT"
PY="${ANSIBLE_PYTHON_INTERPRETER:-$(command -v python3)}"
export ANSIBLE_STDOUT_CALLBACK=ansible.builtin.default ANSIBLE_LOAD_CALLBACK_PLUGINS=1 ANSIBLE_NOCOLOR=1
export ANSIBLE_CALLBACK_RESULT_FORMAT=json

run() {  # run NAME CMD...: print, tee to $OUT/NAME.txt, keep the exit status
    local name=$1; shift
    echo "### $name: $*" | tee "$OUT/$name.txt"
    set +e
    "$@" 2>&1 | tee -a "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    set -e
    echo "### rc=$rc" | tee -a "$OUT/$name.txt"
    return "$rc"
}

modes() {
    "$PY" -c 'import pynvml
pynvml.nvmlInit()
try:
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        print(i, pynvml.nvmlDeviceGetUUID(h), pynvml.nvmlDeviceGetPersistenceMode(h))
finally:
    pynvml.nvmlShutdown()'
}

run environment bash -c "uname -a; id; ansible --version; ansible-doc -l gpuops.nvidia 2>/dev/null | grep nvidia_persistence;
  nvidia-smi --query-gpu=index,name,pci.bus_id,persistence_mode --format=csv 2>/dev/null || true;
  ls -la /var/run/nvidia-persistenced 2>&1 || true; systemctl is-active nvidia-persistenced 2>&1 || true"

run modes-before modes
# Guard for step 2: at least one GPU read, and every GPU reads 1 (enabled); otherwise stop before any write.
if ! grep -v '^###' "$OUT/modes-before.txt" | awk 'NF == 3 {n++; if ($3 != 1) bad = 1} END {exit (n == 0 || bad)}'; then
    echo "could not read every GPU as persistence-enabled: this script only runs where all are enabled; nothing done" >&2
    exit 3
fi

# 1. Check mode, state: enabled: must report changed=false, before == after == enabled on every GPU.
run check-mode ansible localhost -v -c local -e "ansible_python_interpreter=$PY" --check --diff \
    -m gpuops.nvidia.nvidia_persistence -a "state=enabled"

# 2. The same for real: desired == current, so no NVML set call is made (changed=false).
run no-op ansible localhost -v -c local -e "ansible_python_interpreter=$PY" \
    -m gpuops.nvidia.nvidia_persistence -a "state=enabled"

run modes-after modes
if ! diff <(grep -v '^###' "$OUT/modes-before.txt") <(grep -v '^###' "$OUT/modes-after.txt") >/dev/null; then
    echo "PERSISTENCE MODES CHANGED: see $OUT/modes-before.txt and modes-after.txt" >&2
    exit 4
fi
for step in check-mode no-op; do
    grep -q '"changed": false' "$OUT/$step.txt" || { echo "$step: expected changed=false" >&2; exit 5; }
done
echo "OK: check mode and no-op both report changed=false; persistence modes unchanged. Evidence in $OUT/"
