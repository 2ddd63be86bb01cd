#!/usr/bin/env bash
# Runs every hardware evidence script on a real GPU host, read-only for GPU settings (no persistence,
# compute-mode or MIG-mode change), and packs the evidence into $OUT/evidence.tgz (the device tool brings
# back only a few files). Device-tool use:  bash tests/hardware/run_all.sh   with .whl carried (setup.sh).
FINAL_OUT="${OUT:-/tmp/gpuops-evidence-out}"
export OUT=/tmp/gpuops-evidence
rm -rf "$OUT"
source "$(dirname "$0")/setup.sh"
set +e
status=0
nvidia-smi --query-gpu=index,name,persistence_mode,compute_mode,mig.mode.current --format=csv > "$EVIDENCE/settings-before.txt"
for script in gpu_info persistence_check mig_check_mode mps_real; do
    path="$GPUOPS_REPO/tests/hardware/$script.sh"
    [ -f "$path" ] || { echo "=== $script: not present"; continue; }
    echo "=== $script"
    start=$(date +%s.%N)
    OUT="$EVIDENCE/$script" bash "$path" > "$EVIDENCE/$script.log" 2>&1
    rc=$?
    echo "=== $script rc=$rc in $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
    [ "$rc" -eq 0 ] || status=1
    tail -n 30 "$EVIDENCE/$script.log"
done
nvidia-smi --query-gpu=index,name,persistence_mode,compute_mode,mig.mode.current --format=csv > "$EVIDENCE/settings-after.txt"
echo "=== GPU settings before / after (must be identical)"
cat "$EVIDENCE/settings-before.txt" "$EVIDENCE/settings-after.txt"
diff -q "$EVIDENCE/settings-before.txt" "$EVIDENCE/settings-after.txt" && echo "settings unchanged" || status=1
ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/ && /nvidia-cuda-mps/ && !/awk/' | grep . && { echo "MPS processes left behind"; status=1; }
mkdir -p "$FINAL_OUT"
tar czf "$FINAL_OUT/evidence.tgz" -C "$EVIDENCE" .
exit $status
