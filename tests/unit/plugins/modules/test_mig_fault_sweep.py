"""Fault sweep: an NVML error injected at every NVML call of representative nvidia_mig plans, Hopper and Ampere.

Each plan runs once cleanly on the simulator, which records the NVML call sequence (`library.calls`). Then, for
every call of that sequence, the start state is put back, the Nth call of that function is made to fail, and the
module runs again. Whatever fails, the result must be true to the GPU:

* a GPU that is as it was reports `changed: false`; a GPU that changed reports `changed: true` (per GPU and for
  the run), never `changed: false` over a changed GPU;
* a failed run that left a GPU changed says so in its message, naming the GPU (kept the new layout, could not be
  restored, or changed but could not be read back), and `gpus[].after` is what the GPU has (unless it says that it
  could not be confirmed);
* "new UUIDs" is said exactly when a rollback recreated MIG devices;
* a run that does not fail (a fault the engine may ignore, like the resetless-MIG field) applies the plan.

A second sweep adds a second fault at every NVML call that the rollback of a failed write makes.
"""

from __future__ import annotations

import copy
import os
import pathlib
import re
import shutil
import tempfile

import pytest

from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mig
from mig_helpers import clear_faults, gpu_signature

pytestmark = pytest.mark.usefixtures("mig_lock", "nvidia_smi")

FAULT = 999

# name: (GPUs, start layout per GPU or None (MIG off), module arguments)
PLANS = {
    "h100-enable-and-create": ("h100-80gb", None, {"layout": {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}}),
    "h100-keep-destroy-create": ("h100-80gb", {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}, {"layout": {"3g.40gb": 2}}),
    "h100-shared-gi": ("h100-80gb", {"1g.10gb": 7}, {"layout": {"1c.3g.40gb": 3, "4g.40gb": 1}}),
    "h100-disable": ("h100-80gb", {"1c.3g.40gb": 3, "3g.40gb": 1}, {"mode": "disabled"}),
    "h100x2-enable-and-create": ("h100-80gb:2", None, {"layout": {"3g.40gb": 2}}),
    "a100-enable-reset-create": ("a100-40gb", None, {"layout": {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 1}}),
    "a100-keep-destroy-create": ("a100-40gb", {"1g.5gb": 7}, {"layout": {"3g.20gb": 1, "1g.5gb": 3}}),
    "a100-disable-reset": ("a100-40gb", {"2g.10gb": 3}, {"mode": "disabled"}),
    "a100x2-enable-reset-create": ("a100-40gb:2", None, {"layout": {"7g.40gb": 1}}),
    "a100-enable-reset-never": ("a100-80gb", None, {"layout": {"7g.80gb": 1}, "reset": "never"}),
    "a30-pending-enable-reset-create": ("a30", "pending", {"layout": {"2g.12gb+me": 1, "1g.6gb": 2}}),
}


@pytest.fixture
def tmp_path(tmp_path):  # pylint: disable=redefined-outer-name
    """The simulator's state in memory where the host has a tmpfs: the sweep writes the state file thousands of
    times (every call of a function with a fault pending counts it)."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = tempfile.mkdtemp(prefix="gpuops-sweep-", dir="/dev/shm")
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mig(run, **args):
    return run(nvidia_mig, args)


def prepare(sim, run, gpus, start):
    sim.create(gpus)
    if start == "pending":  # a MIG enable left pending by an earlier run with reset: never
        with sim.edit() as data:
            for gpu in data["gpus"]:
                gpu["mig_pending"] = 1
    elif start is not None:
        with sim.edit() as data:
            for gpu in data["gpus"]:
                gpu["mig_current"] = gpu["mig_pending"] = 1
        assert not mig(run, layout=start).failed
    return sim.state()


def put_back(sim, state):
    with sim.edit() as data:
        data.clear()
        data.update(copy.deepcopy(state))


def traced(sim, run, args):
    """The module's result and the NVML calls it made."""
    first = len(sim.library.calls)
    result = mig(run, **args)
    return result, list(sim.library.calls[first:])


def mig_uuids(gpu):
    return set(ci["uuid"] for gi in gpu["gpu_instances"] for ci in gi["compute_instances"])


def sim_devices(gpu):
    return sorted((gi["start"], gi["size"], ci["start"], ci["size"]) for gi in gpu["gpu_instances"]
                  for ci in gi["compute_instances"])


def result_devices(after):
    return sorted((gi["placement"]["start"], gi["placement"]["size"], ci["placement"]["start"],
                   ci["placement"]["size"]) for gi in after["instances"] for ci in gi["compute_instances"])


def said(message, index, *phrases):
    """Whether a sentence of `message` names GPU `index` (`GPU 1 ...`, `GPU(s) 0, 1 ...`) and one of `phrases`."""
    names = re.compile(r"\bGPU(?:\(s\))? (?:[0-9]+, )*%d\b" % index)
    return any(names.search(sentence) and any(p in sentence for p in phrases) for sentence in message.split(". "))


def check_result(result, before, now, target, where):
    """The invariants, for one run with an injected fault; returns the outcome's class (for the summary)."""
    assert "changed" in result or result.failed, where
    if not result.failed:
        assert [gpu_signature(g) for g in now] == target, "%s: no failure, but the plan was not applied" % where
        assert result["changed"] is (target != [gpu_signature(g) for g in before]), where
        return "ignored"
    assert result.get("error_kind"), where
    assert "Traceback" not in result["msg"], where
    gpus = dict((g["index"], g) for g in result.get("gpus", []))
    changed_any = False
    for index, (old, new) in enumerate(zip(before, now)):
        changed = gpu_signature(old) != gpu_signature(new)
        reported = gpus.get(index)
        if reported is None:
            # no per-GPU result: the run failed before its first write
            assert not changed, "%s: GPU %d changed, and the result says nothing about it: %s" % (
                where, index, result["msg"])
            continue
        assert reported["after"] is not None or said(result["msg"], index, "could not be read back"), where
        unconfirmed = reported["after"] is None or not reported["confirmed"]
        if changed or not unconfirmed:  # a GPU that could not be read back may be reported changed
            assert reported["changed"] is changed, "%s: GPU %d changed=%s but reported %s: %s" % (
                where, index, changed, reported["changed"], result["msg"])
        changed_any = changed_any or reported["changed"]
        if changed:
            assert said(result["msg"], index, "keep the new layout", "could NOT be fully restored", "was changed (all",
                        "could not be read back"), "%s: GPU %d changed, and the message does not say so: %s" % (
                where, index, result["msg"])
        if reported["after"] is not None and reported["confirmed"]:
            assert result_devices(reported["after"]) == sim_devices(new), "%s: GPU %d after is wrong" % (where, index)
        lost = mig_uuids(old) - mig_uuids(new)
        if not changed and reported.get("rolled_back"):
            recreated = said(result["msg"], index, "new UUIDs")
            assert recreated is bool(lost), "%s: GPU %d lost UUIDs %s, message: %s" % (where, index, lost, result["msg"])
    assert result.get("changed", False) is changed_any, "%s: run changed=%s, GPUs reported changed=%s: %s" % (
        where, result.get("changed"), changed_any, result["msg"])
    if not changed_any:
        return "failed, as it was"
    return "failed, changes reported"


def sweep(sim, run, name):
    gpus, start, args = PLANS[name]
    initial = prepare(sim, run, gpus, start)
    clean, calls = traced(sim, run, args)
    assert not clean.failed and clean["changed"], clean.get("msg")
    target = [gpu_signature(g) for g in sim.state()["gpus"]]
    outcomes = {}
    converged = set()
    for position, function in enumerate(calls):
        occurrence = calls[:position + 1].count(function)
        put_back(sim, initial)
        sim.fault(function, call=occurrence, code=FAULT)
        result = mig(run, **args)
        clear_faults(sim)
        where = "%s: fault at call %d (%s #%d)" % (name, position, function, occurrence)
        outcome = check_result(result, initial["gpus"], sim.state()["gpus"], target, where)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        left = repr([gpu_signature(g) for g in sim.state()["gpus"]])
        if left not in converged:
            # from each state a fault leaves, the next run converges and a second one reports no change
            converged.add(left)
            assert not mig(run, **args).failed, where
            assert mig(run, **args)["changed"] is False, where
    return calls, outcomes


@pytest.mark.parametrize("name", sorted(PLANS))
def test_fault_at_every_nvml_call(sim, run, name):
    calls, outcomes = sweep(sim, run, name)
    assert sum(outcomes.values()) == len(calls)
    # every plan has faults that fail the run before a write, and faults after writes that are rolled back or reported
    assert outcomes.get("failed, as it was"), outcomes


# The second fault: at every NVML call the run makes after a first fault at the last write of each kind (the one
# with the most to roll back), that is every call of the rollback and of reading the GPUs back for the report.
DOUBLE = ["h100-keep-destroy-create", "a100-enable-reset-create"]
WRITES = ("nvmlDeviceSetMigMode", "nvmlDeviceCreateGpuInstanceWithPlacement", "nvmlGpuInstanceDestroy",
          "nvmlGpuInstanceCreateComputeInstanceWithPlacement", "nvmlComputeInstanceDestroy")


@pytest.mark.parametrize("name", DOUBLE)
def test_second_fault_during_the_rollback(sim, run, name):
    gpus, start, args = PLANS[name]
    initial = prepare(sim, run, gpus, start)
    calls = traced(sim, run, args)[1]
    runs = 0
    for function in sorted(set(calls) & set(WRITES)):
        occurrence = calls.count(function)
        put_back(sim, initial)
        sim.fault(function, call=occurrence, code=FAULT)
        failing = traced(sim, run, args)[1]
        fault_at = [i for i, f in enumerate(failing) if f == function][occurrence - 1]
        for later in range(fault_at + 1, len(failing)):
            second = failing[later]
            put_back(sim, initial)
            sim.fault(function, call=occurrence, code=FAULT)
            sim.fault(second, call=failing[:later + 1].count(second), code=FAULT)
            result = mig(run, **args)
            clear_faults(sim)
            where = "%s: fault at %s #%d, then at call %d (%s)" % (name, function, occurrence, later, second)
            assert result.failed, where
            check_result(result, initial["gpus"], sim.state()["gpus"], None, where)
            runs += 1
    assert runs > 50
