"""Helpers shared by the MIG tests: lock file, a `nvidia-smi` stand-in on PATH, state signatures."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from gpuops_nvml_sim import models

SIMULATOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "simulator")

FUNCTION_OF_ACTION = {
    "destroy_compute_instance": "nvmlComputeInstanceDestroy",
    "destroy_gpu_instance": "nvmlGpuInstanceDestroy",
    "create_gpu_instance": "nvmlDeviceCreateGpuInstanceWithPlacement",
    "create_compute_instance": "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
    "set_mig_mode": "nvmlDeviceSetMigMode",
}

NVIDIA_SMI = """#!/bin/sh
# nvidia-smi stand-in for unit tests: `nvidia-smi -r -i BUS[,BUS...]` resets simulated GPUs.
echo "$@" >> "%(log)s"
if [ "$1" != "-r" ] || [ "$2" != "-i" ]; then echo "unsupported: $*" >&2; exit 2; fi
PYTHONPATH="%(simulator)s" exec "%(python)s" -m gpuops_nvml_sim reset $(echo "$3" | tr ',' ' ')
"""


@pytest.fixture
def mig_lock(tmp_path, monkeypatch):
    path = str(tmp_path / "mig.lock")
    monkeypatch.setenv("GPUOPS_MIG_LOCK_FILE", path)
    return path


@pytest.fixture
def nvidia_smi(tmp_path, monkeypatch, sim):
    """Put a `nvidia-smi` on PATH that resets GPUs through the simulator's CLI; returns its call log."""
    directory = tmp_path / "bin"
    directory.mkdir()
    log = tmp_path / "nvidia-smi.log"
    script = directory / "nvidia-smi"
    script.write_text(NVIDIA_SMI % {"log": log, "simulator": os.path.abspath(SIMULATOR), "python": sys.executable})
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", "%s:%s" % (directory, os.environ.get("PATH", "")))
    return log


NVIDIA_SMI_ONCE = """#!/bin/sh
# nvidia-smi stand-in: the first `nvidia-smi -r -i BUS[,BUS...]` resets simulated GPUs, every later one is refused.
echo "$@" >> "%(log)s"
if [ -e "%(flag)s" ]; then echo "Unable to reset this GPU: in use by another client" >&2; exit 3; fi
touch "%(flag)s"
PYTHONPATH="%(simulator)s" exec "%(python)s" -m gpuops_nvml_sim reset $(echo "$3" | tr ',' ' ')
"""


@pytest.fixture
def nvidia_smi_once(tmp_path, monkeypatch, sim):
    """A `nvidia-smi` on PATH whose first reset works and whose later ones fail; returns its call log."""
    directory = tmp_path / "bin-once"
    directory.mkdir()
    log = tmp_path / "nvidia-smi-once.log"
    script = directory / "nvidia-smi"
    script.write_text(NVIDIA_SMI_ONCE % {"log": log, "flag": tmp_path / "nvidia-smi-reset-once",
                                         "simulator": os.path.abspath(SIMULATOR), "python": sys.executable})
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", "%s:%s" % (directory, os.environ.get("PATH", "")))
    return log


@pytest.fixture
def no_nvidia_smi(monkeypatch, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def gpu_signature(gpu):
    """Mode and GIs/CIs (profile, placement) of a simulated GPU: what 'as it was' compares."""
    return (gpu["mig_current"], gpu["mig_pending"], sorted(
        (gi["profile_id"], gi["start"], gi["size"],
         tuple(sorted((ci["profile_id"], ci["start"], ci["size"]) for ci in gi["compute_instances"])))
        for gi in gpu["gpu_instances"]))


def signature(sim):
    return [gpu_signature(gpu) for gpu in sim.state()["gpus"]]


def devices_of(sim, index):
    """mig-parted style counts of the MIG devices a simulated GPU has."""
    gpu = sim.gpu(index)
    spec = models.model(gpu["model"])
    counts = {}
    for gi in gpu["gpu_instances"]:
        gi_profile = models.gi_profile_by_id(spec, gi["profile_id"])
        for ci in gi["compute_instances"]:
            name = models.ci_profile(gi_profile, ci["profile_id"])["name"][len("MIG "):]
            counts[name] = counts.get(name, 0) + 1
    return counts


def expected_devices(layout):
    """Layout -> the counts NVML reports (`3c.3g.40gb` is the full CI, reported as `3g.40gb`)."""
    counts = {}
    for key, count in layout.items():
        parts = key.split(".", 1)
        if parts[0].endswith("c") and parts[1].split(".")[0].endswith("g") and \
                int(parts[0][:-1]) == int(parts[1].split("g")[0]):
            key = parts[1]
        counts[key] = counts.get(key, 0) + count
    return counts


def catalog_profiles(model_name):
    """A model's GI profiles in `_gpu_info.gpu_instance_profiles` form, for pure planner tests."""
    spec = models.model(model_name)
    return [{
        "name": p["name"][len("MIG "):], "id": p["id"], "index": p["index"], "slices": p["sliceCount"],
        "memory_mib": p["memorySizeMB"], "max_instances": p["instanceCount"],
        "placements": [{"start": s, "size": z} for s, z in p["placements"]],
    } for p in spec["gi_profiles"]]


def clear_faults(sim):
    with sim.edit() as data:
        data["faults"] = []


def feasible_layouts(model, max_size):
    """Hypothesis strategy: random layouts of `model` that fit, built by adding profiles while they still fit."""
    from hypothesis import strategies as st
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_plan as planner

    cat = planner.Catalog(catalog_profiles(model))
    keys = cat.valid_keys()

    @st.composite
    def build(draw):
        layout = {}
        for key in draw(st.lists(st.sampled_from(keys), max_size=max_size)):
            trial = dict(layout)
            trial[key] = trial.get(key, 0) + 1
            if planner.explain_infeasible(cat, planner.expand_layout(cat, trial)) is None:
                layout = trial
        return layout
    return build()


NON_ROOT_RUNNER = r"""
import json, os, sys
sys.path.insert(0, {simulator!r})
sys.path.insert(0, {collections!r})
import gpuops_nvml_sim
gpuops_nvml_sim.install({state!r})
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mig
import ansible.module_utils.basic, ansible.module_utils.common.warnings  # everything main() needs, loaded as root
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
assert os.geteuid() == 65534
sys.argv = ["nvidia_mig", {args!r}]
nvidia_mig.main()
"""


def run_mig_as_nobody(sim, args, check_mode=False, lock_file=None):
    """Run nvidia_mig as uid/gid 65534 in a child process (the simulator answers NO_PERMISSION to its writes), on a
    copy of the state that user can write; returns (result, final state).

    The child imports everything as root (the interpreter may live under /root, mode 0700), then drops every uid
    and gid before main(). `lock_file`: the GPUOPS_MIG_LOCK_FILE it sees (default: one in a root-only directory).
    """
    from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mig  # pylint: disable=import-outside-toplevel

    collections = os.path.abspath(os.path.join(nvidia_mig.__file__, "..", "..", "..", "..", "..", ".."))
    shared = tempfile.mkdtemp(prefix="gpuops-mig-nobody-")
    os.chmod(shared, 0o777)
    state = os.path.join(shared, "state.json")
    with open(sim.path) as source, open(state, "w") as target:
        target.write(source.read())
    open(state + ".lock", "w").close()
    os.chmod(state, 0o666)
    os.chmod(state + ".lock", 0o666)
    private = tempfile.mkdtemp(prefix="gpuops-mig-root-")  # mode 0700: nobody may not create the lock there
    args_path = os.path.join(shared, "args.json")
    payload = dict(args)
    payload["_ansible_check_mode"] = check_mode
    with open(args_path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, handle)
    os.chmod(args_path, 0o644)
    code = NON_ROOT_RUNNER.format(simulator=os.path.abspath(SIMULATOR), collections=collections, state=state,
                                  args=args_path)
    env = dict(os.environ, GPUOPS_NVML_SIM_STATE=state, HOME=shared, TMPDIR=shared,
               GPUOPS_MIG_LOCK_FILE=lock_file or os.path.join(private, "mig.lock"))
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=shared,
                              timeout=60, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, "no JSON from the non-root module run: rc=%s stdout=%r stderr=%r" % (
            proc.returncode, proc.stdout, proc.stderr)
        with open(state) as handle:
            final = json.load(handle)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)
    return json.loads(lines[-1]), final
