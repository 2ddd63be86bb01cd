#!/usr/bin/env bash
# Hardware evidence for nvidia_gpu_info (read-only): the module's output beside `nvidia-smi -q`, the wall time
# of both, and the simulator-fidelity capture re-read on this GPU. Changes no GPU setting.
source "$(dirname "$0")/setup.sh"
DIR="$EVIDENCE/gpu-info"
mkdir -p "$DIR"
cd "$GPUOPS_REPO"

nvidia-smi -q > "$DIR/nvidia-smi-q.txt"
ansible localhost -m gpuops.nvidia.nvidia_gpu_info > "$DIR/nvidia_gpu_info.txt" 2>&1
ansible localhost -m gpuops.nvidia.nvidia_gpu_info -a 'gather=min' > "$DIR/nvidia_gpu_info_min.txt" 2>&1

python3 - "$DIR" <<'PY'
import json, os, statistics, subprocess, sys, time
out = sys.argv[1]
def median_ms(argv, runs=7):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
rows = [
    ("nvidia-smi -q", ["nvidia-smi", "-q"]),
    ("nvidia-smi -q -x", ["nvidia-smi", "-q", "-x"]),
    ("ansible localhost -m gpuops.nvidia.nvidia_gpu_info (all)", ["ansible", "localhost", "-m", "gpuops.nvidia.nvidia_gpu_info"]),
    ("ansible localhost -m gpuops.nvidia.nvidia_gpu_info -a gather=min", ["ansible", "localhost", "-m", "gpuops.nvidia.nvidia_gpu_info", "-a", "gather=min"]),
    ("ansible localhost -m ansible.builtin.ping (Ansible's own floor)", ["ansible", "localhost", "-m", "ansible.builtin.ping"]),
]
with open(os.path.join(out, "timings.txt"), "w") as handle:
    for label, argv in rows:
        line = "%-70s median %8.1f ms (7 runs)" % (label, median_ms(argv))
        print(line); handle.write(line + "\n")
# In-process cost of the engine alone (one NVML session, everything gathered).
sys.path.insert(0, "/tmp/gpuops-collections")
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession
from ansible_collections.gpuops.nvidia.plugins.module_utils._gpu_info import gather
times = []
for _ in range(20):
    start = time.perf_counter()
    with NvmlSession() as session:
        facts = gather(session)
    times.append((time.perf_counter() - start) * 1000)
line = "%-70s median %8.1f ms (20 runs)" % ("engine in-process: NvmlSession + gather(all)", statistics.median(times))
print(line)
with open(os.path.join(out, "timings.txt"), "a") as handle:
    handle.write(line + "\n")
json.dump(facts, open(os.path.join(out, "engine-facts.json"), "w"), indent=1)
PY

# The simulator's fidelity capture, re-read from this real GPU and compared with the committed fixture.
python3 - "$DIR" <<'PY'
import json, os, sys
sys.path.insert(0, "tests/unit/simulator")
import pynvml
from test_fidelity import capture_like_the_real_one, _expected
pynvml.nvmlInit()
try:
    actual = capture_like_the_real_one()
finally:
    pynvml.nvmlShutdown()
expected = _expected()
json.dump(actual, open(os.path.join(sys.argv[1], "fidelity-capture.json"), "w"), indent=1, default=str)
diffs = []
def walk(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            walk(a.get(key, "<missing>"), b.get(key, "<missing>"), path + "/" + str(key))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, "%s/%d" % (path, i))
    elif a != b:
        diffs.append("%s: this GPU %r, fixture %r" % (path, a, b))
walk(actual, expected)
with open(os.path.join(sys.argv[1], "fidelity-diff.txt"), "w") as handle:
    handle.write("\n".join(diffs) + "\n")
print("fidelity: %d field(s) differ from the committed capture (identity fields expected to differ):" % len(diffs))
print("\n".join(diffs))
PY
