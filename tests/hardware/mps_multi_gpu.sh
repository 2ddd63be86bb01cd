#!/usr/bin/env bash
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Hardware evidence for MPS clients on a multi-GPU node: one gpuops.nvidia.nvidia_mps daemon per GPU (private
# pipe/log directories, compute_mode: keep, a 4G pinned limit on its device 0), then per GPU a PyTorch client that
# runs with EXACTLY the module's returned client_environment (env -i), allocates 2 GiB (must work) and 6 GiB (must
# be refused by the pinned limit), and is listed under its daemon's server. A control client without
# CUDA_VISIBLE_DEVICES shows the failure the old client_environment caused. Both daemons are stopped; GPU settings
# must be identical before and after. Never changes a GPU setting.
set -u
source "$(dirname "$0")/setup.sh"
set +e
OUT_DIR="${EVIDENCE}/mps_multi_gpu"; mkdir -p "$OUT_DIR"
TORCH_PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
live_mps() { ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/ && /nvidia-cuda-mps/ && !/awk/'; }
FAILED=0
check() { if eval "$2"; then echo "PASS: $1" | tee -a "$OUT_DIR/summary.txt"; else echo "FAIL: $1" | tee -a "$OUT_DIR/summary.txt"; FAILED=1; fi; }
json_of() { python3 -c 'import json,sys; t=sys.stdin.read(); print(json.dumps(json.loads(t[t.index("{"):]), indent=1, sort_keys=True))'; }
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$@"; }
: >"$OUT_DIR/summary.txt"
SETTINGS="index,uuid,persistence_mode,compute_mode,mig.mode.current"
nvidia-smi --query-gpu=$SETTINGS --format=csv >"$OUT_DIR/settings-before.csv"
COUNT=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
echo "GPUs: $COUNT"; cat "$OUT_DIR/settings-before.csv"
mps() {  # mps INDEX NAME ARGS...: the module ad hoc for GPU INDEX's daemon, JSON to $OUT_DIR/NAME.json
  local index=$1 name=$2; shift 2
  local start
  start=$(date +%s.%N)
  ansible localhost -m gpuops.nvidia.nvidia_mps -a "pipe_directory=/tmp/gpuops-mps-$index/pipe log_directory=/tmp/gpuops-mps-$index/log compute_mode=keep $*" \
    2>"$OUT_DIR/$name.stderr" | json_of >"$OUT_DIR/$name.json"
  echo "$name: $(python3 -c "import time; print(round(time.time() - $start, 2))") s wall" >>"$OUT_DIR/timings.txt"
}
# shellcheck disable=SC2034  # used inside the eval'd client commands below
CLIENT_PY='
import os, sys, time, torch
gib = 1 << 30
dev = torch.cuda.current_device()
print("visible", os.environ.get("CUDA_VISIBLE_DEVICES"), "count", torch.cuda.device_count(), "name", torch.cuda.get_device_name(dev), flush=True)
a = torch.empty(2 * gib, dtype=torch.uint8, device="cuda"); a.fill_(1); torch.cuda.synchronize()
print("2GiB ok", int(a[:1024].sum()), flush=True)
try:
    b = torch.empty(6 * gib, dtype=torch.uint8, device="cuda"); b.fill_(1); torch.cuda.synchronize()
    print("6GiB allocated (limit NOT enforced)", flush=True)
except RuntimeError as exc:
    print("6GiB refused:", str(exc).splitlines()[0], flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
print("client done", flush=True)
'
for i in $(seq 0 $((COUNT - 1))); do
  mps "$i" "start-$i" "devices=$i" "default_device_pinned_mem_limit='{\"0\": \"4G\"}'"
  check "GPU $i daemon started" "[ \"\$(field $OUT_DIR/start-$i.json 'd[\"running\"]')\" = True ]"
  field "$OUT_DIR/start-$i.json" 'd["client_environment"]' >"$OUT_DIR/client-env-$i.txt"
done
CLIENTS=()
for i in $(seq 0 $((COUNT - 1))); do
  ENVARGS=$(python3 -c 'import json,sys,shlex; e=json.load(open(sys.argv[1]))["client_environment"]; print(" ".join(shlex.quote("%s=%s" % kv) for kv in sorted(e.items())))' "$OUT_DIR/start-$i.json")
  eval "exec env -i PATH=/usr/bin:/bin HOME=/root $ENVARGS $TORCH_PY -c \"\$CLIENT_PY\" 25" >"$OUT_DIR/client-$i.txt" 2>&1 &
  CLIENTS+=($!)
done
for i in $(seq 0 $((COUNT - 1))); do for _ in $(seq 1 120); do grep -q "6GiB" "$OUT_DIR/client-$i.txt" && break; sleep 0.5; done; done
for i in $(seq 0 $((COUNT - 1))); do
  mps "$i" "report-$i" "devices=$i" "default_device_pinned_mem_limit='{\"0\": \"4G\"}'"
  UUID=$(nvidia-smi -i "$i" --query-gpu=uuid --format=csv,noheader)
  check "GPU $i: client ran with only the returned environment" "grep -q '2GiB ok' $OUT_DIR/client-$i.txt"
  check "GPU $i: client saw its GPU $UUID" "grep -q 'visible $UUID count 1' $OUT_DIR/client-$i.txt"
  check "GPU $i: 6 GiB over the 4G pinned limit refused" "grep -q '6GiB refused' $OUT_DIR/client-$i.txt"
  check "GPU $i: report names client pid ${CLIENTS[$i]}" "field $OUT_DIR/report-$i.json '[c for s in d[\"servers\"] for c in s[\"clients\"]]' | grep -qw ${CLIENTS[$i]}"
  check "GPU $i: second run unchanged" "[ \"\$(field $OUT_DIR/report-$i.json 'd[\"changed\"]')\" = False ]"
done
nvidia-smi >"$OUT_DIR/nvidia-smi-with-clients.txt" 2>&1
wait "${CLIENTS[@]}"
# Control: the old client environment (no CUDA_VISIBLE_DEVICES) against the daemon of the last GPU.
LAST=$((COUNT - 1))
if [ "$COUNT" -gt 1 ]; then
  ENVARGS=$(python3 -c 'import json,sys,shlex; e=json.load(open(sys.argv[1]))["client_environment"]; e.pop("CUDA_VISIBLE_DEVICES"); print(" ".join(shlex.quote("%s=%s" % kv) for kv in sorted(e.items())))' "$OUT_DIR/start-$LAST.json")
  eval "timeout 120 env -i PATH=/usr/bin:/bin HOME=/root $ENVARGS $TORCH_PY -c \"\$CLIENT_PY\" 0" >"$OUT_DIR/client-without-visible-devices.txt" 2>&1
  echo "rc=$?" >>"$OUT_DIR/client-without-visible-devices.txt"
  check "control: a client without CUDA_VISIBLE_DEVICES does not get its 2 GiB (old environment)" "! grep -q '2GiB ok' $OUT_DIR/client-without-visible-devices.txt"
fi
for i in $(seq 0 $((COUNT - 1))); do
  cp "/tmp/gpuops-mps-$i/log/control.log" "$OUT_DIR/control-$i.log" 2>/dev/null
  mps "$i" "stop-$i" "state=stopped"
  check "GPU $i daemon stopped" "[ \"\$(field $OUT_DIR/stop-$i.json 'd[\"running\"]')\" = False ]"
done
# The mps role's path without systemd: nvidia_mps_instances plans an instance selected by PCI bus id (read-only),
# its desired state is written as the role writes it, and the unit's steps run through gpuops_mps_helper.py
# (pre-start, start = resolve + exec the control, configure, stop, post-stop); a client uses the planned env.
BUS=$(nvidia-smi -i $LAST --query-gpu=pci.bus_id --format=csv,noheader)
PLAN_ARGS=$(python3 -c 'import json,sys; print(json.dumps({"pipe_root": "/tmp/gpuops-role/run", "log_root": "/tmp/gpuops-role/log", "binary": sys.argv[2], "instances": [{"name": "bybus", "devices": [sys.argv[1]], "compute_mode": "keep", "default_device_pinned_mem_limit": {"0": "4G"}}]}))' "$BUS" "$(command -v nvidia-cuda-mps-control)")
ansible localhost -m gpuops.nvidia.nvidia_mps_instances -a "$PLAN_ARGS" \
  2>"$OUT_DIR/role-plan.stderr" | json_of >"$OUT_DIR/role-plan.json"
mkdir -p /tmp/gpuops-role/daemon /tmp/gpuops-role/run/bybus /tmp/gpuops-role/log/bybus
field "$OUT_DIR/role-plan.json" '__import__("json").dumps(d["instances"][0]["config"])' >/tmp/gpuops-role/daemon/bybus.json
check "role plan resolves bus id $BUS to GPU $LAST" "field $OUT_DIR/role-plan.json 'd[\"instances\"][0][\"client_environment\"][\"CUDA_VISIBLE_DEVICES\"]' | grep -q \"\$(nvidia-smi -i $LAST --query-gpu=uuid --format=csv,noheader)\""
export GPUOPS_MPS_CONFIG_DIR=/tmp/gpuops-role/daemon GPUOPS_NVIDIA_LIB=/tmp/gpuops-collections
HELPER="$GPUOPS_REPO/roles/mps/files/gpuops_mps_helper.py"
for s in pre-start start configure; do python3 "$HELPER" $s bybus >>"$OUT_DIR/role-helper.txt" 2>&1; echo "$s rc=$?" >>"$OUT_DIR/role-helper.txt"; done
check "role helper started the daemon" "grep -q 'start rc=0' $OUT_DIR/role-helper.txt && grep -q 'configure rc=0' $OUT_DIR/role-helper.txt"
ENVARGS=$(python3 -c 'import json,sys,shlex; e=json.load(open(sys.argv[1]))["instances"][0]["client_environment"]; print(" ".join(shlex.quote("%s=%s" % kv) for kv in sorted(e.items())))' "$OUT_DIR/role-plan.json")
eval "timeout 120 env -i PATH=/usr/bin:/bin HOME=/root $ENVARGS $TORCH_PY -c \"\$CLIENT_PY\" 0" >"$OUT_DIR/role-client.txt" 2>&1
check "a client with the role's env ran and the 4G limit held" "grep -q '2GiB ok' $OUT_DIR/role-client.txt && grep -q '6GiB refused' $OUT_DIR/role-client.txt"
for s in stop post-stop; do python3 "$HELPER" $s bybus >>"$OUT_DIR/role-helper.txt" 2>&1; echo "$s rc=$?" >>"$OUT_DIR/role-helper.txt"; done
check "role helper stopped the daemon" "grep -q 'stop rc=0' $OUT_DIR/role-helper.txt && grep -q 'post-stop rc=0' $OUT_DIR/role-helper.txt"
rm -rf /tmp/gpuops-role
sleep 1
live_mps >"$OUT_DIR/mps-processes-after.txt"
check "no live MPS process after the stops" "[ ! -s $OUT_DIR/mps-processes-after.txt ]"
nvidia-smi --query-gpu=$SETTINGS --format=csv >"$OUT_DIR/settings-after.csv"
check "GPU settings identical before and after" "diff -q $OUT_DIR/settings-before.csv $OUT_DIR/settings-after.csv"
# The module's wall time beside the equivalent nvidia-smi query.
for _ in 1 2 3; do s=$(date +%s.%N); nvidia-smi --query-gpu=index,uuid,compute_mode --format=csv >/dev/null; python3 -c "import time; print('nvidia-smi --query-gpu: %.3f s' % (time.time() - $s))"; done >>"$OUT_DIR/timings.txt"
rm -rf /tmp/gpuops-mps-*
echo; cat "$OUT_DIR/summary.txt"; cat "$OUT_DIR/timings.txt"
exit $FAILED
