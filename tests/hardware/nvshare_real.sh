#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2207,SC2206,SC2086,SC2002  # functions run from traps and helpers; our own numeric outputs and an optional argument are split on purpose
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Hardware evidence for the gpuops.nvidia.nvshare role on a real GPU host without systemd (the device tool's
# Ubuntu 24.04 containers/VMs). Device-tool use, carrying the ansible-core wheels and nvshare's source tarball:
#
#   OUT=... bash tests/hardware/nvshare_real.sh          carry: [.whl, .nvshare-src]
#
# .nvshare-src/nvshare-src.tar.gz is `git archive --prefix=nvshare-<commit>/` of github.com/grgalex/nvshare (never
# committed: .git/info/exclude), with its sha256 in .nvshare-src/nvshare-src.tar.gz.sha256.
#
# What it does, in order (each step's result goes to $OUT_DIR, summary.txt holds every PASS/FAIL):
#  1. Checks the tools (gcc, make, unshare, nsenter, mount, python3 with pynvml, torch) and records the GPU settings.
#  2. Runs the role's own tasks with ansible-playbook on localhost: archive.yml (the controller-side checksum),
#     plan.yml (gpuops.nvidia.nvidia_nvshare_instances on the real GPUs: NVML resolution, MIG/MPS checks, each
#     scheduler's and client's environment) and install.yml with nvshare_install_method: source (unpack, make, the
#     glibc check of the built nvsharectl, install under a private prefix in /tmp, ldconfig). Then it renders the
#     role's unit template and client drop-in templates and writes nvshare.json, as the role does.
#  3. No systemd here, so the rendered unit is run the way systemd would: per GPU, RuntimeDirectory= is created,
#     ExecStart runs with the unit's Environment= in a private mount namespace where BindPaths= is applied
#     (unshare + mount --bind), and ExecStartPost (the role's helper: nvsharectl -S on -T 15) runs inside that
#     namespace (nsenter). Clients run in a namespace of their own with the drop-in's Environment= and
#     BindReadOnlyPaths=. Nothing else is started the scheduler's or clients' way.
#  4. The headline, on GPU 0: two PyTorch processes, each allocating and touching 60 % of the memory NVML reports free
#     before any of them starts, then running the same element-wise passes over it (about 20 s of work, calibrated
#     on the control run) and checking the result. Without nvshare the second one fails with out-of-memory while the
#     first holds its memory; under nvshare (TQ 15 s) both finish. One process alone is timed with and without
#     nvshare (twice each, interleaved) for the overhead.
#  5. With two or more GPUs: one scheduler per GPU, a pair of clients on GPU 0 and a pair on GPU 1 at the same time;
#     each scheduler's log must show only its own clients and lock hand-offs.
#  6. A probe (no claim depends on it): what NVML enumerates in a mount namespace where GPU 0's device node is
#     masked - libnvshare's idle check reads NVML device 0 whatever GPU the client uses.
#
# Safety: no GPU setting is changed (no persistence, compute mode, MIG or reset); settings are compared before and
# after. Each process asks for managed memory sized from the free memory NVML reported before the clients started,
# never more than that; the second process of a pair relies on the driver's eviction of the first one's pages while
# nvshare keeps that first one off the GPU, which is what nvshare is for. A single run under nvshare goes first; the
# pairs run only if it worked. Every process has a time limit and everything started is stopped at the end.
set -u
FINAL_OUT="${OUT:-/tmp/gpuops-nvshare-evidence-out}"
export OUT=/tmp/gpuops-nvshare-evidence
rm -rf "$OUT"
source "$(dirname "$0")/setup.sh"
set +e
OUT_DIR="$EVIDENCE/nvshare"
mkdir -p "$OUT_DIR"
WORK=/tmp/gpuops-nvshare-hw
rm -rf "$WORK"
mkdir -p "$WORK/render"
TORCH_PY=${TORCH_PY:-/opt/torch/.venv/bin/python}
[ -x "$TORCH_PY" ] || TORCH_PY=$(command -v python3)
SRC="$GPUOPS_REPO/.nvshare-src/nvshare-src.tar.gz"
SHARE=${NVSHARE_HW_SHARE:-0.60}
TQ=${NVSHARE_HW_TQ:-15}
TARGET=${NVSHARE_HW_SECONDS:-20}
PASSES=100
LIMIT=${NVSHARE_HW_CLIENT_LIMIT:-300}
START=$(date +%s)
FAILED=0
STARTED=()
: >"$OUT_DIR/summary.txt"
log() { echo "$*" | tee -a "$OUT_DIR/summary.txt"; }
check() { if eval "$2"; then log "PASS: $1"; else log "FAIL: $1"; FAILED=1; fi; }
elapsed() { echo $(( $(date +%s) - START )); }
cleanup() {
  for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  sleep 1
  for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  rm -rf /run/nvshare-gpus /run/nvshare/scheduler.sock "$WORK/prefix" "$WORK/cache"
  rmdir /run/nvshare 2>/dev/null
}
trap cleanup EXIT

# -- 1. tools and GPU settings --------------------------------------------------------------------------------
SETTINGS="index,uuid,name,persistence_mode,compute_mode,mig.mode.current,memory.total,memory.free"
nvidia-smi --query-gpu=$SETTINGS --format=csv >"$OUT_DIR/settings-before.csv"
cat "$OUT_DIR/settings-before.csv"
COUNT=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
{ uname -a; cat /etc/os-release | head -2; ldd --version | head -1; gcc --version | head -1; make --version | head -1
  "$TORCH_PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1; free -g | head -2; } >"$OUT_DIR/machine.txt" 2>&1
cat "$OUT_DIR/machine.txt"
for tool in gcc make unshare nsenter mount tar; do
  check "$tool is installed" "command -v $tool >/dev/null"
done
check "python3 has pynvml" "python3 -c 'import pynvml' 2>/dev/null"
check "torch sees $COUNT GPU(s)" "[ \"\$($TORCH_PY -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)\" = $COUNT ]"
check "the nvshare source tarball was carried" "[ -s $SRC ]"
check "a private mount namespace can be made here" "unshare --mount --propagation private true"
[ "$FAILED" = 0 ] || { log "missing prerequisites: stopping"; exit 1; }
SHA=$(sha256sum "$SRC" | cut -d' ' -f1)
[ -s "$SRC.sha256" ] && check "the tarball is the one prepared ($(cut -c1-16 "$SRC.sha256")...)" \
  "[ \"\$(cut -d' ' -f1 $SRC.sha256)\" = $SHA ]"

# -- 2. the role's tasks: checksum, plan on the real GPUs, source build and install -----------------------------
CLIENTS_YAML=$(python3 -c 'import sys; n=int(sys.argv[1]); print([{"service": "hw-gpu%d" % i, "device": i} for i in range(min(n, 2))])' "$COUNT")
cat >"$WORK/playbook.yml" <<EOF
- name: nvshare role tasks on this host (no systemd here)
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    nvshare_install_method: source
    nvshare_archive: $SRC
    nvshare_archive_checksum: "sha256:$SHA"
    nvshare_build_packages: []
    nvshare_prefix: $WORK/prefix
    nvshare_cache_dir: $WORK/cache
    nvshare_lib_dir: $WORK/lib
    nvshare_config_dir: $WORK/etc
    nvshare_python: $(command -v python3)
    nvshare_tq: $TQ
    nvshare_anti_thrash: true
    nvshare_clients: $CLIENTS_YAML
    repo: $GPUOPS_REPO
  tasks:
    - name: The controller-side checksum of the archive (the role's archive.yml)
      ansible.builtin.include_role: {name: gpuops.nvidia.nvshare, tasks_from: archive, public: true}
    - name: Plan and validate on the real GPUs (the role's plan.yml)
      ansible.builtin.include_role: {name: gpuops.nvidia.nvshare, tasks_from: plan, public: true}
    - name: Build and install (the role's install.yml)
      ansible.builtin.include_role: {name: gpuops.nvidia.nvshare, tasks_from: install, public: true}
    - name: Run the handlers (ldconfig)
      ansible.builtin.meta: flush_handlers
    - name: Write the desired state as the role does
      ansible.builtin.copy:
        content: "{{ nvshare_plan.config | to_nice_json(sort_keys=true) }}\n"
        dest: "{{ nvshare_config_dir }}/nvshare.json"
        mode: "0644"
    - name: Render the role's scheduler unit
      ansible.builtin.template:
        src: "{{ repo }}/roles/nvshare/templates/nvshare-scheduler@.service.j2"
        dest: $WORK/render/nvshare-scheduler@.service
        mode: "0644"
    - name: Render the role's client drop-ins
      ansible.builtin.template:
        src: "{{ repo }}/roles/nvshare/templates/client-dropin.conf.j2"
        dest: "$WORK/render/{{ item.service }}.conf"
        mode: "0644"
      loop_control:
        label: "{{ item.service }}"
      loop: "{{ nvshare_plan.clients }}"
    - name: Keep the plan
      ansible.builtin.copy:
        content: "{{ nvshare_plan | to_nice_json }}\n"
        dest: $WORK/render/plan.json
        mode: "0644"
EOF
mkdir -p "$WORK/etc"
s=$(date +%s.%N)
ansible-playbook -i localhost, "$WORK/playbook.yml" >"$OUT_DIR/role-tasks.log" 2>&1
rc=$?
echo "role tasks (checksum, plan, source build, install): $(python3 -c "import time; print(round(time.time() - $s, 1))") s" >>"$OUT_DIR/timings.txt"
tail -n 25 "$OUT_DIR/role-tasks.log"
check "the role's tasks ran (plan on the GPUs, build from source, install)" "[ $rc = 0 ]"
check "the role recap shows no failure" "grep -q 'failed=0' $OUT_DIR/role-tasks.log"
[ "$rc" = 0 ] || exit 1
cp "$WORK/render/"* "$OUT_DIR/"
check "the plan has one scheduler per GPU" \
  "[ \"\$(python3 -c 'import json; print(len(json.load(open(\"$WORK/render/plan.json\"))[\"schedulers\"]))')\" = $COUNT ]"
check "the built files are installed" "[ -x $WORK/prefix/sbin/nvshare-scheduler ] && [ -x $WORK/prefix/bin/nvsharectl ] && [ -f $WORK/prefix/lib/libnvshare.so ]"
grep -o 'GLIBC_[0-9.]*' <(objdump -T "$WORK/prefix/sbin/nvshare-scheduler" 2>/dev/null) | sort -Vu | tail -1 >"$OUT_DIR/scheduler-glibc.txt"

# -- 3. the rendered unit and drop-ins, run the way systemd runs them ------------------------------------------
cat >"$WORK/unitrun.py" <<'PYEOF'
"""Run a rendered systemd unit / drop-in the way systemd would, for a host without systemd.

  unitrun.py start UNIT INSTANCE LOG        -> prints the main pid after ExecStartPost succeeded
  unitrun.py client DROPIN -- ARGV...       -> runs ARGV with the drop-in's Environment= and BindReadOnlyPaths=
"""
import os, shlex, subprocess, sys, time

def parse(path, instance=""):
    keys = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith(("#", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        keys.setdefault(key, []).append(value.replace("%i", instance))
    return keys

def environment(keys, inherit=False):
    # systemd starts a unit with a clean environment; a client keeps its own (as a service's unit gives it) so that
    # it differs from the run without nvshare only in what the drop-in adds
    env = dict(os.environ) if inherit else {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for assignment in keys.get("Environment", []):
        name, value = assignment.split("=", 1)
        env[name] = value
    return env

BIND = 'mkdir -p "$2" && mount --bind "$1" "$2" %s&& shift 2 && exec "$@"'

def start(unit, instance, log):
    keys = parse(unit, instance)
    runtime = os.path.join("/run", keys["RuntimeDirectory"][0])
    os.makedirs(runtime, exist_ok=True)
    os.chmod(runtime, int(keys.get("RuntimeDirectoryMode", ["0755"])[0], 8))
    source, target = keys["BindPaths"][0].split(":")
    env = environment(keys)
    argv = shlex.split(keys["ExecStart"][0])
    out = open(log, "ab")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", BIND % "",
                             "sh", source, target] + argv, env=env, stdout=out, stderr=out, start_new_session=True)
    time.sleep(0.5)
    if proc.poll() is not None:
        sys.exit("ExecStart exited at once with %s" % proc.returncode)
    for post in keys.get("ExecStartPost", []):
        post_argv = [part.replace("$MAINPID", str(proc.pid)) for part in shlex.split(post)]
        done = subprocess.run(["nsenter", "--mount=/proc/%d/ns/mnt" % proc.pid, "--"] + post_argv, env=env,
                              stdout=out, stderr=out, check=False)
        if done.returncode != 0:
            sys.exit("ExecStartPost failed with %s (see %s)" % (done.returncode, log))
    print(proc.pid)

def client(dropin, argv):
    keys = parse(dropin)
    source, target = keys["BindReadOnlyPaths"][0].split(":")
    env = environment(keys, inherit=True)
    if os.environ.get("GPUOPS_LIBCUDA_LINK_DIR"):  # see the libcuda.so check in the script
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (os.environ["GPUOPS_LIBCUDA_LINK_DIR"],
                                                      os.environ.get("LD_LIBRARY_PATH")) if p)
    os.execvpe("unshare", ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                           BIND % '&& mount -o remount,bind,ro "$2" ', "sh", source, target] + argv, env)

if sys.argv[1] == "start":
    start(*sys.argv[2:5])
else:
    client(sys.argv[2], sys.argv[sys.argv.index("--") + 1:])
PYEOF

cat >"$WORK/workload.py" <<'PYEOF'
"""One client: allocate SIZE bytes on the GPU it sees, touch them, PASSES element-wise passes, check, report.

  workload.py TAG SIZE PASSES OUT.json [HOLD_DIR]   with HOLD_DIR: after allocating, write HOLD_DIR/TAG.ready and
                                                    wait for HOLD_DIR/release before computing
"""
import json, os, sys, time
t0 = time.time()
import torch
tag, size, passes, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hold = sys.argv[5] if len(sys.argv) > 5 else None
rec = {"tag": tag, "pid": os.getpid(), "size_bytes": size, "passes": passes,
       "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "ld_preload": os.environ.get("LD_PRELOAD"),
       "nvshare_mapped": any("libnvshare" in line for line in open("/proc/self/maps")), "ok": False}
try:
    props = torch.cuda.get_device_properties(0)
    rec["device"] = props.name
    rec["device_uuid"] = "GPU-" + str(props.uuid) if hasattr(props, "uuid") else None
    rec["import_s"] = round(time.time() - t0, 2)
    x = torch.empty(size, dtype=torch.uint8, device="cuda")
    x.fill_(1)
    torch.cuda.synchronize()
    rec["allocated_s"] = round(time.time() - t0, 2)
    if hold:
        open(os.path.join(hold, tag + ".ready"), "w").close()
        while not os.path.exists(os.path.join(hold, "release")):
            time.sleep(0.2)
    t1 = time.time()
    marks = []
    for i in range(passes):
        x.add_(1)
        if (i + 1) % 25 == 0:
            torch.cuda.synchronize()
            marks.append([i + 1, round(time.time() - t0, 2)])
    torch.cuda.synchronize()
    rec["compute_s"] = round(time.time() - t1, 3)
    rec["marks"] = marks
    expect = (1 + passes) % 256
    rec["verified"] = bool((x[: 1 << 20] == expect).all().item() and (x[-(1 << 20):] == expect).all().item())
    rec["ok"] = rec["verified"]
except Exception as exc:  # the out-of-memory error is the expected result of the control
    rec["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
rec["wall_s"] = round(time.time() - t0, 2)
with open(out, "w") as handle:
    json.dump(rec, handle, indent=1)
print(json.dumps({k: rec.get(k) for k in ("tag", "ok", "wall_s", "compute_s", "error")}), flush=True)
PYEOF

UUIDS=($(python3 -c 'import json; print(" ".join(s["instance"] for s in json.load(open("/tmp/gpuops-nvshare-hw/render/plan.json"))["schedulers"]))'))
FREE=($(python3 -c '
import pynvml
pynvml.nvmlInit()
print(" ".join(str(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free) for i in range(pynvml.nvmlDeviceGetCount())))
pynvml.nvmlShutdown()'))
SIZES=()
for i in $(seq 0 $((COUNT - 1))); do
  SIZES+=($(python3 -c "print(int(${FREE[$i]} * $SHARE) // (1 << 21) * (1 << 21))"))
  log "GPU $i ${UUIDS[$i]}: NVML free ${FREE[$i]} bytes before the clients; each client asks for ${SIZES[$i]} bytes ($SHARE)"
done
mkdir -p /run/nvshare
SCHED_PIDS=()
for i in $(seq 0 $((COUNT - 1))); do
  pid=$(python3 "$WORK/unitrun.py" start "$WORK/render/nvshare-scheduler@.service" "${UUIDS[$i]}" "$OUT_DIR/scheduler-$i.log")
  rc=$?
  check "GPU $i: scheduler started from the rendered unit, settings applied by ExecStartPost (pid $pid)" "[ $rc = 0 ] && [ -n '$pid' ]"
  [ "$rc" = 0 ] || continue
  SCHED_PIDS+=("$pid"); STARTED+=("$pid")
  check "GPU $i: its socket is /run/nvshare-gpus/${UUIDS[$i]}/scheduler.sock on the host" "[ -S /run/nvshare-gpus/${UUIDS[$i]}/scheduler.sock ]"
  check "GPU $i: nvsharectl set TQ $TQ s through the scheduler's namespace" "grep -q 'New TQ = $TQ' $OUT_DIR/scheduler-$i.log"
  cp "/run/nvshare-gpus/${UUIDS[$i]}/gpuops-applied.json" "$OUT_DIR/applied-$i.json"
  check "GPU $i: the applied record names the scheduler's pid" "grep -q '\"pid\": $pid' $OUT_DIR/applied-$i.json"
done
[ "${#SCHED_PIDS[@]}" = "$COUNT" ] || { log "schedulers did not start: stopping"; exit 1; }
for i in $(seq 0 $((COUNT - 1))); do
  check "GPU $i: its scheduler sees /run/nvshare-gpus/${UUIDS[$i]} at /run/nvshare (its own mount namespace)" \
    "[ \$(stat -L -c %i /proc/${SCHED_PIDS[$i]}/root/run/nvshare) = \$(stat -c %i /run/nvshare-gpus/${UUIDS[$i]}) ]"
done
# libnvshare.so dlopen()s "libcuda.so", the development name; a driver install may only have libcuda.so.1.
if ! ldconfig -p | grep -q 'libcuda\.so '; then
  REAL=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
  mkdir -p "$WORK/libcuda" && ln -sfn "$REAL" "$WORK/libcuda/libcuda.so"
  export GPUOPS_LIBCUDA_LINK_DIR="$WORK/libcuda"
  log "NOTE: this host has no libcuda.so (only $REAL): nvshare clients get a private libcuda.so link to it"
fi

client() {  # client GPU TAG NVSHARE(yes|no) [HOLD_DIR] -> runs in background, pid in $CLIENT_PID
  local gpu=$1 tag=$2 under=$3 hold=${4:-}
  if [ "$under" = yes ]; then
    timeout -s KILL "$LIMIT" python3 "$WORK/unitrun.py" client "$WORK/render/hw-gpu$gpu.service.conf" -- \
      "$TORCH_PY" "$WORK/workload.py" "$tag" "${SIZES[$gpu]}" "$PASSES" "$OUT_DIR/$tag.json" $hold >"$OUT_DIR/$tag.log" 2>&1 &
  else
    CUDA_VISIBLE_DEVICES=${UUIDS[$gpu]} timeout -s KILL "$LIMIT" "$TORCH_PY" "$WORK/workload.py" "$tag" "${SIZES[$gpu]}" \
      "$PASSES" "$OUT_DIR/$tag.json" $hold >"$OUT_DIR/$tag.log" 2>&1 &
  fi
  CLIENT_PID=$!
  STARTED+=("$CLIENT_PID")
}
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get(sys.argv[2]))' "$@" 2>/dev/null; }
handoffs() {  # handoffs LOGFILE FROM_LINE -> "LOCK_OK=n DROP_LOCK=n LOCK_RELEASED=n"
  tail -n +"$2" "$1" | awk '/Sent LOCK_OK/{a++} /Sent DROP_LOCK/{b++} /Received LOCK_RELEASED/{c++} END{printf "LOCK_OK=%d DROP_LOCK=%d LOCK_RELEASED=%d", a, b, c}'
}

# -- 4. GPU 0: the control without nvshare, one process alone with and without, the pair under nvshare ----------
HOLD="$WORK/hold"; mkdir -p "$HOLD"
client 0 control-a no "$HOLD"; A=$CLIENT_PID
for _ in $(seq 1 240); do [ -e "$HOLD/control-a.ready" ] && break; kill -0 $A 2>/dev/null || break; sleep 0.5; done
check "control: the first process without nvshare holds ${SIZES[0]} bytes" "[ -e $HOLD/control-a.ready ]"
nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv >"$OUT_DIR/control-compute-apps.csv" 2>&1
client 0 control-b no; wait $CLIENT_PID
touch "$HOLD/release"; wait $A
check "control: without nvshare the second process fails with out-of-memory" \
  "[ \"\$(field $OUT_DIR/control-b.json ok)\" = False ] && grep -qi 'out of memory' $OUT_DIR/control-b.json"
check "control: the first process finished" "[ \"\$(field $OUT_DIR/control-a.json ok)\" = True ]"
rm -rf "$HOLD"
# the control's 100 passes calibrate the rest: about TARGET seconds of work per process
PASSES=$(python3 -c "import json; c=json.load(open('$OUT_DIR/control-a.json')).get('compute_s') or 0; print(max(100, int(round(100 * $TARGET / c))) if c > 0 else 400)")
log "calibration: 100 passes took $(field "$OUT_DIR/control-a.json" compute_s) s on GPU 0: each process runs $PASSES passes"
for round in 1 2; do
  client 0 alone-plain-$round no; wait $CLIENT_PID
  client 0 alone-nvshare-$round yes; wait $CLIENT_PID
done
check "one process alone under nvshare finished and verified its data" \
  "[ \"\$(field $OUT_DIR/alone-nvshare-1.json ok)\" = True ] && [ \"\$(field $OUT_DIR/alone-nvshare-1.json nvshare_mapped)\" = True ]"
check "one process alone without nvshare finished" "[ \"\$(field $OUT_DIR/alone-plain-1.json ok)\" = True ]"
ALONE_OK=$([ "$(field "$OUT_DIR/alone-nvshare-1.json" ok)" = True ] && echo yes || echo no)
python3 - "$OUT_DIR" >>"$OUT_DIR/timings.txt" <<'PYEOF'
import json, statistics, sys
d = sys.argv[1]
def get(tag, key):
    try:
        return json.load(open("%s/%s.json" % (d, tag))).get(key)
    except (IOError, ValueError):
        return None
for key in ("compute_s", "wall_s"):
    plain = [get("alone-plain-%d" % r, key) for r in (1, 2)]
    shared = [get("alone-nvshare-%d" % r, key) for r in (1, 2)]
    if None in plain + shared:
        print("alone %s: missing (%s / %s)" % (key, plain, shared)); continue
    p, s = statistics.median(plain), statistics.median(shared)
    print("one process alone, %s: without nvshare %s (median %.3f s), under nvshare %s (median %.3f s): overhead %+.1f %%"
          % (key, plain, p, shared, s, 100.0 * (s - p) / p))
PYEOF
bound() {  # bound TAG GPU -> the workload of TAG sees GPU's scheduler directory at /run/nvshare
  local pid
  pid=$(pgrep -f "^$TORCH_PY $WORK/workload.py $1 " | head -1)
  [ -n "$pid" ] && [ "$(stat -L -c %i /proc/$pid/root/run/nvshare)" = "$(stat -c %i /run/nvshare-gpus/${UUIDS[$2]})" ] \
    && echo "$1 pid $pid: /run/nvshare is /run/nvshare-gpus/${UUIDS[$2]}" >>"$OUT_DIR/bindings.txt"
}
if [ "$ALONE_OK" = yes ]; then
  LINE0=$(($(wc -l <"$OUT_DIR/scheduler-0.log") + 1))
  s=$(date +%s.%N)
  client 0 pair-a yes; PA=$CLIENT_PID
  client 0 pair-b yes; PB=$CLIENT_PID
  sleep 15; nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv >"$OUT_DIR/pair-compute-apps.csv" 2>&1
  check "pair: both clients are bound to GPU 0's scheduler directory" "bound pair-a 0 && bound pair-b 0"
  wait $PA $PB
  MAKESPAN=$(python3 -c "import time; print(round(time.time() - $s, 1))")
  check "nvshare: both processes of the pair finished and verified their data" \
    "[ \"\$(field $OUT_DIR/pair-a.json ok)\" = True ] && [ \"\$(field $OUT_DIR/pair-b.json ok)\" = True ]"
  H=$(handoffs "$OUT_DIR/scheduler-0.log" "$LINE0")
  check "nvshare: GPU 0's scheduler handed the lock between them ($H)" "[ \$(echo '$H' | sed 's/.*LOCK_OK=\([0-9]*\).*/\1/') -ge 2 ]"
  echo "pair under nvshare on GPU 0 (TQ $TQ s, $PASSES passes each): pair-a wall $(field "$OUT_DIR/pair-a.json" wall_s) s, pair-b wall $(field "$OUT_DIR/pair-b.json" wall_s) s, both done after $MAKESPAN s; scheduler: $H" >>"$OUT_DIR/timings.txt"
else
  log "SKIP: the pair (one process alone under nvshare did not work: see alone-nvshare-1.log)"
  FAILED=1
fi

# -- 5. two GPUs: a pair on each, at the same time, each with its own scheduler --------------------------------
if [ "$COUNT" -ge 2 ] && [ "$ALONE_OK" = yes ] && [ "$(elapsed)" -lt 420 ]; then
  L0=$(($(wc -l <"$OUT_DIR/scheduler-0.log") + 1)); L1=$(($(wc -l <"$OUT_DIR/scheduler-1.log") + 1))
  s=$(date +%s.%N)
  PIDS=()
  for g in 0 1; do for x in a b; do client $g multi-gpu$g-$x yes; PIDS+=($CLIENT_PID); done; done
  sleep 15; nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv >"$OUT_DIR/multi-compute-apps.csv" 2>&1
  for g in 0 1; do
    check "GPU $g: both of its clients are bound to its scheduler's directory" "bound multi-gpu$g-a $g && bound multi-gpu$g-b $g"
  done
  wait "${PIDS[@]}"
  echo "two GPUs, a pair on each at once: all done after $(python3 -c "import time; print(round(time.time() - $s, 1))") s" >>"$OUT_DIR/timings.txt"
  for g in 0 1; do
    L=$([ $g = 0 ] && echo $L0 || echo $L1)
    H=$(handoffs "$OUT_DIR/scheduler-$g.log" "$L")
    check "GPU $g: both of its clients finished and verified their data ($H)" \
      "[ \"\$(field $OUT_DIR/multi-gpu$g-a.json ok)\" = True ] && [ \"\$(field $OUT_DIR/multi-gpu$g-b.json ok)\" = True ]"
    check "GPU $g: its scheduler registered exactly its two clients" \
      "[ \$(tail -n +$L $OUT_DIR/scheduler-$g.log | grep -c 'Registered client') = 2 ]"
    check "GPU $g: its clients computed on ${UUIDS[$g]}" \
      "[ \"\$(field $OUT_DIR/multi-gpu$g-a.json cuda_visible_devices)\" = ${UUIDS[$g]} ] && [ \"\$(field $OUT_DIR/multi-gpu$g-b.json cuda_visible_devices)\" = ${UUIDS[$g]} ]"
    echo "GPU $g pair: a $(field "$OUT_DIR/multi-gpu$g-a.json" wall_s) s, b $(field "$OUT_DIR/multi-gpu$g-b.json" wall_s) s; scheduler: $H" >>"$OUT_DIR/timings.txt"
  done
elif [ "$COUNT" -ge 2 ]; then
  log "SKIP: the two-GPU run (time used: $(elapsed) s, or the single run under nvshare failed)"
fi

# -- 6. probe: NVML's device 0 in a namespace where GPU 0's device node is masked (libnvshare's idle check) ------
if [ "$COUNT" -ge 2 ]; then
  MINOR=$(python3 -c 'import pynvml; pynvml.nvmlInit(); print(pynvml.nvmlDeviceGetMinorNumber(pynvml.nvmlDeviceGetHandleByIndex(0)))')
  unshare --mount --propagation private -- /bin/sh -c "mount --bind /dev/null /dev/nvidia$MINOR && exec python3 -c '
import pynvml
try:
    pynvml.nvmlInit()
    n = pynvml.nvmlDeviceGetCount()
    print(\"count\", n)
    for i in range(n):
        try:
            print(i, pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)))
        except pynvml.NVMLError as e:
            print(i, \"error\", e)
except pynvml.NVMLError as e:
    print(\"nvmlInit error\", e)
'" >"$OUT_DIR/probe-nvml-gpu0-masked.txt" 2>&1
  echo "probe (GPU 0 = ${UUIDS[0]} masked):" >>"$OUT_DIR/probe-nvml-gpu0-masked.txt"
fi

# -- stop everything, compare settings -----------------------------------------------------------------------
for pid in "${SCHED_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
sleep 1
ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/ && /nvshare-scheduler|workload.py/ && !/awk/' >"$OUT_DIR/left-behind.txt"
check "nothing of ours is left running (schedulers stopped, clients done)" "[ ! -s $OUT_DIR/left-behind.txt ]"
nvidia-smi --query-gpu=$SETTINGS --format=csv | cut -d, -f1-6 >"$OUT_DIR/settings-after.csv"
cut -d, -f1-6 "$OUT_DIR/settings-before.csv" >"$OUT_DIR/settings-before-cmp.csv"
check "GPU settings identical before and after" "diff -q $OUT_DIR/settings-before-cmp.csv $OUT_DIR/settings-after.csv"
echo "total: $(elapsed) s" >>"$OUT_DIR/timings.txt"
echo; cat "$OUT_DIR/summary.txt"; echo; cat "$OUT_DIR/timings.txt"
mkdir -p "$FINAL_OUT"
tar czf "$FINAL_OUT/nvshare-evidence.tgz" -C "$EVIDENCE" .
cp "$OUT_DIR/summary.txt" "$OUT_DIR/timings.txt" "$FINAL_OUT/" 2>/dev/null
exit $FAILED
