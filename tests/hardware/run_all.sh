#!/usr/bin/env bash
# Runs every hardware evidence script on a real GPU host, read-only for GPU settings; output under $OUT.
# Device-tool use:  bash tests/hardware/run_all.sh   (with .whl carried; see tests/hardware/setup.sh)
source "$(dirname "$0")/setup.sh"
status=0
for script in gpu_info.sh persistence_check.sh mig_check_mode.sh mps_real.sh; do
    path="$GPUOPS_REPO/tests/hardware/$script"
    [ -f "$path" ] || { echo "=== $script: not present"; continue; }
    echo "=== $script"
    bash "$path" > "$EVIDENCE/${script%.sh}.log" 2>&1 || { echo "=== $script FAILED (rc $?)"; status=1; }
    tail -n 40 "$EVIDENCE/${script%.sh}.log"
done
nvidia-smi --query-gpu=persistence_mode,compute_mode,mig.mode.current --format=csv | tee "$EVIDENCE/settings-after.txt"
exit $status
