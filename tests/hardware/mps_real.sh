#!/usr/bin/env bash
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Hardware evidence for gpuops.nvidia.nvidia_mps on a real GPU node (root, python3 with torch, the real
# nvidia-cuda-mps-control, ansible with the collection installed). No systemd needed.
# It NEVER changes the compute mode (compute_mode: keep) and uses private pipe/log directories.
#   1. start a daemon for GPU 0, set the defaults, run again (must be unchanged), read them back with the control;
#   2. a CUDA client (torch) runs through the daemon and appears in the module's report;
#   3. state: stopped leaves no live MPS process and the compute mode unchanged. (Zombies are not counted: a
#      container without an init that reaps orphans keeps the exited daemon as <defunct>.)
# Outputs go to $OUT (or ./mps-real-out). Exit 0 only when every check passed.
set -u
live_mps() { ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/ && /nvidia-cuda-mps/ && !/awk/'; }
OUT=${OUT:-$PWD/mps-real-out}
mkdir -p "$OUT"
PIPE=$(mktemp -d /tmp/gpuops-mps-pipe.XXXXXX)
LOG=$(mktemp -d /tmp/gpuops-mps-log.XXXXXX)
export CUDA_MPS_PIPE_DIRECTORY=$PIPE CUDA_MPS_LOG_DIRECTORY=$LOG
FAILED=0
check() { if eval "$2"; then echo "PASS: $1" | tee -a "$OUT/summary.txt"; else echo "FAIL: $1" | tee -a "$OUT/summary.txt"; FAILED=1; fi; }
mps() {  # mps NAME ARGS...: run the module ad hoc, output to $OUT/NAME.txt
  local name=$1; shift
  ansible localhost -m gpuops.nvidia.nvidia_mps -a "pipe_directory=$PIPE log_directory=$LOG compute_mode=keep $*" \
    >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name (rc $rc)"; cat "$OUT/$name.txt"
  return $rc
}
: >"$OUT/summary.txt"
nvidia-smi --query-gpu=index,uuid,compute_mode,mig.mode.current --format=csv >"$OUT/before-gpus.csv" 2>&1
MODE_BEFORE=$(nvidia-smi -i 0 --query-gpu=compute_mode --format=csv,noheader)
live_mps >"$OUT/pgrep-before.txt"; [ -s "$OUT/pgrep-before.txt" ] && echo "note: MPS processes were already running" | tee -a "$OUT/summary.txt"

LIMITS='{"0": "4G"}'
mps start devices=0 default_active_thread_percentage=50 "default_device_pinned_mem_limit='$LIMITS'" default_client_priority=1
check "start reports changed" "grep -q '\"changed\": true' '$OUT/start.txt'"
mps again devices=0 default_active_thread_percentage=50 "default_device_pinned_mem_limit='$LIMITS'" default_client_priority=1
check "second run unchanged" "grep -q '\"changed\": false' '$OUT/again.txt'"
for cmd in get_default_active_thread_percentage "get_default_device_pinned_mem_limit 0" get_default_client_priority; do
  echo "\$ echo '$cmd' | nvidia-cuda-mps-control"; echo "$cmd" | nvidia-cuda-mps-control; echo "[rc=$?]"
done >"$OUT/readback.txt" 2>&1
cat "$OUT/readback.txt"
check "thread percentage reads 50.0" "grep -qx '50.0' '$OUT/readback.txt'"
check "pinned limit reads 4G" "grep -qx '4G' '$OUT/readback.txt'"

mps limit devices=0 default_active_thread_percentage=40 "default_device_pinned_mem_limit='$LIMITS'" default_client_priority=1
check "limit change keeps the daemon pid" \
  "[ \"\$(grep -o '\"pid\": [0-9]*' '$OUT/start.txt')\" = \"\$(grep -o '\"pid\": [0-9]*' '$OUT/limit.txt')\" ]"

python3 - >"$OUT/client.txt" 2>&1 <<'PY' &
import time
import torch
x = torch.ones(1 << 20, device="cuda")
torch.cuda.synchronize()
print("client ok", float(x.sum()), flush=True)
time.sleep(20)
PY
CLIENT=$!
for _ in $(seq 1 60); do grep -q "client ok" "$OUT/client.txt" && break; sleep 0.5; done
mps report devices=0 default_active_thread_percentage=40 "default_device_pinned_mem_limit='$LIMITS'" default_client_priority=1
check "client ran through MPS" "grep -q 'client ok' '$OUT/client.txt'"
check "a server is reported" "grep -A12 '\"servers\"' '$OUT/report.txt' | grep -q '\"pid\"'"
check "the client pid $CLIENT is reported" "grep -A30 '\"servers\"' '$OUT/report.txt' | grep -qw '$CLIENT'"
nvidia-smi >"$OUT/nvidia-smi-with-client.txt" 2>&1
wait "$CLIENT"

mps stop state=stopped
sleep 1
live_mps >"$OUT/pgrep-after.txt"; ps -eo pid=,stat=,args= | grep "[n]vidia-cuda-mps" >"$OUT/ps-all-after.txt"
check "no MPS process after stop" "[ ! -s '$OUT/pgrep-after.txt' ]"
MODE_AFTER=$(nvidia-smi -i 0 --query-gpu=compute_mode --format=csv,noheader)
check "compute mode unchanged ($MODE_BEFORE)" "[ '$MODE_BEFORE' = '$MODE_AFTER' ]"
ls -la "$PIPE" "$LOG" >"$OUT/dirs-after.txt" 2>&1
cp "$LOG/control.log" "$OUT/control.log" 2>/dev/null
mps stop-again state=stopped
check "second stop unchanged" "grep -q '\"changed\": false' '$OUT/stop-again.txt'"
echo; cat "$OUT/summary.txt"
rm -rf "$PIPE" "$LOG"
exit $FAILED
