#!/usr/bin/env bash
# Hardware evidence for nvidia_mig check mode, on a real GPU whose MIG mode is DISABLED and must stay so.
#
#   tests/hardware/mig_check_mode.sh [GPU_INDEX]      (default 0; run as root, ansible + collection on the path)
#
# Asks nvidia_mig, in check mode with diff, for MIG enabled with a 3g+2g+1g layout. It must report the plan
# (enable MIG, create GPU and compute instances) and change nothing; nvidia-smi must still read MIG disabled.
# Writes its evidence to ${OUT:-.}/mig-check-mode/.
set -euo pipefail

GPU="${1:-0}"
OUTDIR="${OUT:-.}/mig-check-mode"
mkdir -p "$OUTDIR"
LAYOUT='{"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}'
export GPUOPS_MIG_LOCK_FILE="${GPUOPS_MIG_LOCK_FILE:-$OUTDIR/mig.lock}"

mig_mode() {
    nvidia-smi -i "$GPU" --query-gpu=mig.mode.current,mig.mode.pending --format=csv,noheader | tr -d ' '
}

before="$(mig_mode)"
echo "before: mig.mode.current,pending = $before" | tee "$OUTDIR/summary.txt"
if [ "$before" != "Disabled,Disabled" ]; then
    echo "ABORT: this check expects MIG disabled on GPU $GPU (got $before); nothing was run" | tee -a "$OUTDIR/summary.txt"
    exit 2
fi
nvidia-smi -i "$GPU" --query-gpu=name,pci.device_id,uuid --format=csv,noheader | tee -a "$OUTDIR/summary.txt"
# The layout names above are H100 80GB profiles; on another model the module fails validation and lists the valid ones.

args="{\"devices\": [$GPU], \"mode\": \"enabled\", \"layout\": $LAYOUT}"

# 1. Human-readable: the plan and the slice-map diff.
ansible localhost -m gpuops.nvidia.nvidia_mig -a "$args" --check --diff 2>&1 | tee "$OUTDIR/check-diff.txt"

# 2. Machine-readable result, to assert on (ad-hoc output is `localhost | CHANGED => {json}`).
ANSIBLE_CALLBACK_RESULT_FORMAT=json ANSIBLE_NOCOLOR=1 \
    ansible localhost -m gpuops.nvidia.nvidia_mig -a "$args" --check > "$OUTDIR/check.out"

python3 - "$OUTDIR/check.out" <<'PY' | tee -a "$OUTDIR/summary.txt"
import json, sys
text = open(sys.argv[1]).read()
result = json.JSONDecoder().raw_decode(text[text.index("=> {") + 3:])[0]
assert not result.get("failed"), result.get("msg")
actions = [step["action"] for step in result["plan"]]
print("changed (would change):", result["changed"])
for step in result["plan"]:
    print("  plan:", step["description"])
assert result["changed"] is True, "check mode should report a change"
assert actions[0] == "set_mig_mode", actions
assert actions.count("create_gpu_instance") == 3 and actions.count("create_compute_instance") == 3, actions
gpu = result["gpus"][0]
assert gpu["before"]["mig_mode"] == "disabled", gpu["before"]
assert gpu["after"]["devices"] == {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}, gpu["after"]
print("slice map before:", gpu["slice_map"]["before"])
print("slice map after: ", gpu["slice_map"]["after"])
print("PLAN OK")
PY

after="$(mig_mode)"
echo "after: mig.mode.current,pending = $after" | tee -a "$OUTDIR/summary.txt"
nvidia-smi --query-gpu=index,mig.mode.current --format=csv | tee -a "$OUTDIR/summary.txt"
if [ "$after" != "Disabled,Disabled" ]; then
    echo "FAIL: MIG mode changed on GPU $GPU: $after" | tee -a "$OUTDIR/summary.txt"
    exit 1
fi
echo "PASS: plan reported, MIG still disabled" | tee -a "$OUTDIR/summary.txt"
