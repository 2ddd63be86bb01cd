"""Unit-test plumbing: every test gets its own simulated node, installed under the real pynvml."""

from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "simulator"))

import gpuops_nvml_sim  # noqa: E402  pylint: disable=wrong-import-position
from gpuops_nvml_sim import state as simstate  # noqa: E402  pylint: disable=wrong-import-position
from ansible.module_utils.testing import patch_module_args  # noqa: E402  pylint: disable=wrong-import-position


class SimulatedNode:
    """A simulated node: its state file, helpers to change it, and the installed SimulatedLibrary."""

    def __init__(self, path):
        self.path = path
        self.store = simstate.StateStore(path)
        self.library = None

    def create(self, gpus="h100-80gb:1", **kwargs):
        self.store.create(simstate.new_state(simstate.parse_gpu_spec(gpus), **kwargs), force=True)
        self.library = gpuops_nvml_sim.install(self.path)
        return self

    def state(self):
        return json.loads(json.dumps(self.store.read()))

    def edit(self):
        return self.store.transaction()

    def gpu(self, index=0):
        return self.state()["gpus"][index]

    def add_process(self, gpu=0, pid=4242, name="python3", memory_mib=512, gi=None, ci=None):
        with self.edit() as data:
            simstate.add_process(data, gpu, pid, name, memory_mib, gi, ci)

    def fault(self, function, call=1, code=999):
        with self.edit() as data:
            simstate.add_fault(data, function, call, code)

    def reboot(self):
        with self.edit() as data:
            simstate.reboot(data)

    def make_mig_device(self, index=0):
        """Through pynvml: enable MIG on GPU `index`, create one 1g GPU instance with a compute instance; its UUID."""
        import pynvml  # pylint: disable=import-outside-toplevel

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceSetMigMode(handle, 1)
            gi_profile = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE)
            gi = pynvml.nvmlDeviceCreateGpuInstance(handle, gi_profile.id)
            ci_profile = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
            pynvml.nvmlGpuInstanceCreateComputeInstance(gi, ci_profile.id)
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, 0))
        finally:
            pynvml.nvmlShutdown()
        return uuid.decode() if isinstance(uuid, bytes) else uuid

    def reset(self, *bus_ids):
        with self.edit() as data:
            simstate.reset_gpus(data, list(bus_ids))

    def writes(self):
        """NVML set/create/destroy calls made so far through the simulated library."""
        return [name for name in self.library.calls if name in self.library._MUTATING]


@pytest.fixture
def sim(tmp_path, monkeypatch):
    path = str(tmp_path / "nvml-state.json")
    monkeypatch.setenv(simstate.STATE_ENV, path)
    node = SimulatedNode(path)
    yield node
    gpuops_nvml_sim.uninstall()


class ModuleResult(dict):
    @property
    def failed(self):
        return bool(self.get("failed"))


def run_module(module, args, check_mode=False, diff=False, capsys=None):
    """Run an Ansible module's main() in-process with `args`; returns its JSON result."""
    args = dict(args)
    # Ansible keeps warnings in module-global state; each in-process run starts with none.
    from ansible.module_utils.common import warnings as ansible_warnings  # pylint: disable=import-outside-toplevel
    ansible_warnings._global_warnings.clear()  # pylint: disable=protected-access
    ansible_warnings._global_deprecations.clear()  # pylint: disable=protected-access
    args["_ansible_check_mode"] = check_mode
    args["_ansible_diff"] = diff
    with patch_module_args(args):
        try:
            module.main()
        except SystemExit:
            pass
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("{")]
    assert lines, "module printed no JSON result; stdout=%r stderr=%r" % (captured.out, captured.err)
    return ModuleResult(json.loads(lines[-1]))


@pytest.fixture
def run(capsys):
    def runner(module, args=None, check_mode=False, diff=False):
        return run_module(module, args or {}, check_mode=check_mode, diff=diff, capsys=capsys)
    return runner
