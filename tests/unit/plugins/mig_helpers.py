"""Helpers shared by the MIG tests: lock file, a `nvidia-smi` stand-in on PATH, state signatures."""

from __future__ import annotations

import os
import stat
import sys

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
