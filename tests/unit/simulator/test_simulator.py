"""NVML behaviours the simulator must reproduce, driven through the real pynvml."""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import pynvml as N

import gpuops_nvml_sim
from gpuops_nvml_sim import state as simstate

SIMULATOR_DIR = os.path.dirname(os.path.dirname(os.path.abspath(gpuops_nvml_sim.__file__)))
H100_3G, H100_2G, H100_1G, H100_7G = 9, 14, 19, 0


class _InitialisedNode:
    """The simulated node, with nvmlInit done right after the GPUs are created."""

    def __init__(self, node):
        self.node = node

    def create(self, gpus):
        self.node.create(gpus)
        N.nvmlInit()
        return self

    def __getattr__(self, name):
        return getattr(self.node, name)


@pytest.fixture
def nvml(sim):
    yield _InitialisedNode(sim)
    try:
        N.nvmlShutdown()
    except N.NVMLError:
        pass


def _gi(handle, profile_id, start, size):
    return N.nvmlDeviceCreateGpuInstanceWithPlacement(handle, profile_id,
                                                      ctypes.byref(N.c_nvmlGpuInstancePlacement_t(start, size)))


def _enable_mig(index=0):
    handle = N.nvmlDeviceGetHandleByIndex(index)
    assert N.nvmlDeviceSetMigMode(handle, 1) == 0
    return handle


def test_edge_cases_match_the_capture(nvml):
    nvml.create("h100-80gb:1")
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlDeviceGetHandleByIndex(99)
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetHandleByUUID("garbage")
    uuid = N.nvmlDeviceGetUUID(N.nvmlDeviceGetHandleByIndex(0))
    assert N.nvmlDeviceGetUUID(N.nvmlDeviceGetHandleByPciBusId("00000000:18:00.0")) == uuid
    assert N.nvmlDeviceGetUUID(N.nvmlDeviceGetHandleByPciBusId("18:00.0")) == uuid
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetHandleByPciBusId("0000:99:00.0")
    handle = N.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    array = (N.c_nvmlGpuInstance_t * 7)()
    N.nvmlDeviceGetGpuInstances(handle, H100_1G, array, ctypes.byref(count))
    assert count.value == 0
    with pytest.raises(N.NVMLError_NotFound):
        N.nvmlDeviceGetMigDeviceHandleByIndex(handle, 0)
    assert N.nvmlDeviceIsMigDeviceHandle(handle).value == 0
    values = N.nvmlDeviceGetFieldValues(handle, [184, 199, 230])
    assert [(v.nvmlReturn, v.value.uiVal) for v in values] == [(0, 1), (0, 1), (0, 0)]
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlGpuInstanceGetComputeInstanceProfileInfo(handle, 0, 0)
    N.nvmlShutdown()
    with pytest.raises(N.NVMLError_Uninitialized):
        N.nvmlShutdown()


def test_profile_index_is_not_profile_id(nvml):
    nvml.create("h100-80gb:1,a30:1")
    h100, a30 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
    ids = {i: N.nvmlDeviceGetGpuInstanceProfileInfo(h100, i).id for i in (0, 1, 2, 3, 4, 7, 9)}
    assert ids == {0: 19, 1: 14, 2: 9, 3: 5, 4: 0, 7: 20, 9: 15}
    assert N.nvmlDeviceGetGpuInstanceProfileInfo(a30, 0).id == 14
    with pytest.raises(N.NVMLError_NotSupported):
        N.nvmlDeviceGetGpuInstanceProfileInfo(h100, 5)
    with pytest.raises(N.NVMLError_InvalidArgument):
        N.nvmlDeviceGetGpuInstanceProfileInfo(h100, 0x11)


def test_placements_overlap_and_capacity(nvml):
    nvml.create("h100-80gb:1")
    handle = _enable_mig()
    gi = _gi(handle, H100_3G, 0, 4)
    assert N.nvmlGpuInstanceGetInfo(gi).id == 1
    with pytest.raises(N.NVMLError_InsufficientResources):
        _gi(handle, H100_2G, 2, 2)
    with pytest.raises(N.NVMLError_InvalidArgument):
        _gi(handle, H100_3G, 2, 4)
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(handle, H100_3G) == 1
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(handle, H100_7G) == 0
    assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(handle, H100_1G) == 3
    for start in (4, 5, 6):
        _gi(handle, H100_1G, start, 1)
    with pytest.raises(N.NVMLError_InsufficientResources):
        N.nvmlDeviceCreateGpuInstance(handle, H100_1G)


def test_compute_instances_and_mig_devices(nvml):
    nvml.create("h100-80gb:1")
    handle = _enable_mig()
    gi = _gi(handle, H100_3G, 4, 4)
    one_slice = N.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 0, 0)
    assert (one_slice.name, one_slice.instanceCount) == ("MIG 1c.3g.40gb", 3)
    cis = [N.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        gi, 0, ctypes.byref(N.c_nvmlComputeInstancePlacement_t(start, 1))) for start in (0, 1, 2)]
    assert [N.nvmlComputeInstanceGetInfo(ci).id for ci in cis] == [0, 1, 2]
    assert N.nvmlDeviceGetMaxMigDeviceCount(handle) == 7
    mig = N.nvmlDeviceGetMigDeviceHandleByIndex(handle, 1)
    assert N.nvmlDeviceIsMigDeviceHandle(mig).value == 1
    assert N.nvmlDeviceGetName(mig) == "NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb"
    mig_uuid = N.nvmlDeviceGetUUID(mig)
    assert mig_uuid.startswith("MIG-")
    assert (N.nvmlDeviceGetGpuInstanceId(mig), N.nvmlDeviceGetComputeInstanceId(mig)) == (2, 1)
    by_uuid = N.nvmlDeviceGetHandleByUUID(mig_uuid)
    assert N.nvmlDeviceGetUUID(N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(by_uuid)) == \
        N.nvmlDeviceGetUUID(handle)
    with pytest.raises(N.NVMLError_InUse):
        N.nvmlGpuInstanceDestroy(gi)
    for ci in cis:
        N.nvmlComputeInstanceDestroy(ci)
    N.nvmlGpuInstanceDestroy(gi)


def test_hopper_switches_at_once_ampere_waits_for_a_reset(nvml):
    nvml.create("h100-80gb:1,a100-40gb:1")
    h100, a100 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
    assert N.nvmlDeviceSetMigMode(h100, 1) == 0
    assert N.nvmlDeviceGetMigMode(h100) == [1, 1]
    assert N.nvmlDeviceSetMigMode(a100, 1) == N.NVML_ERROR_RESET_REQUIRED
    assert N.nvmlDeviceGetMigMode(a100) == [0, 1]
    with pytest.raises(N.NVMLError_NotSupported):
        N.nvmlDeviceCreateGpuInstance(a100, 9)
    nvml.reset("00000000:28:00.0")
    assert N.nvmlDeviceGetMigMode(a100) == [1, 1]


def test_busy_gpu_refuses_mode_change_and_reset(nvml):
    nvml.create("h100-80gb:1,a100-40gb:1")
    nvml.add_process(gpu=0, pid=111, name="train.py")
    nvml.add_process(gpu=1, pid=222, name="dcgm")
    h100, a100 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(N.NVMLError_InUse):
        N.nvmlDeviceSetMigMode(h100, 1)
    assert N.nvmlDeviceSetMigMode(a100, 1) == N.NVML_ERROR_IN_USE
    with pytest.raises(simstate.SimulatorError, match="in use"):
        nvml.reset("00000000:28:00.0")
    processes = N.nvmlDeviceGetComputeRunningProcesses(h100)
    assert [(p.pid, p.usedGpuMemory) for p in processes] == [(111, 512 * 1024 * 1024)]
    assert N.nvmlSystemGetProcessName(111) == "train.py"


def test_reboot_drops_what_a_real_reboot_drops(nvml):
    nvml.create("h100-80gb:1,a100-40gb:1")
    h100 = _enable_mig(0)
    a100 = N.nvmlDeviceGetHandleByIndex(1)
    N.nvmlDeviceSetMigMode(a100, 1)
    N.nvmlDeviceSetPersistenceMode(h100, 1)
    N.nvmlDeviceSetComputeMode(a100, 3)
    _gi(h100, H100_7G, 0, 8)
    nvml.reboot()
    assert N.nvmlDeviceGetMigMode(h100) == [0, 0]
    assert N.nvmlDeviceGetMigMode(a100) == [1, 1]
    assert N.nvmlDeviceGetPersistenceMode(h100) == 0
    assert N.nvmlDeviceGetComputeMode(a100) == 0
    assert nvml.gpu(0)["gpu_instances"] == []


def test_compute_mode_rules(nvml):
    nvml.create("h100-80gb:1")
    handle = N.nvmlDeviceGetHandleByIndex(0)
    N.nvmlDeviceSetComputeMode(handle, N.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS)
    assert N.nvmlDeviceGetComputeMode(handle) == 3
    with pytest.raises(N.NVMLError_NotSupported):
        N.nvmlDeviceSetComputeMode(handle, 1)
    N.nvmlDeviceSetComputeMode(handle, 0)
    _enable_mig()
    with pytest.raises(N.NVMLError_NotSupported):
        N.nvmlDeviceSetComputeMode(handle, 3)


def test_fault_injection_fails_the_nth_call(nvml):
    nvml.create("h100-80gb:1")
    handle = _enable_mig()
    nvml.fault("nvmlDeviceCreateGpuInstanceWithPlacement", call=2, code=N.NVML_ERROR_UNKNOWN)
    _gi(handle, H100_1G, 0, 1)
    with pytest.raises(N.NVMLError_Unknown):
        _gi(handle, H100_1G, 1, 1)
    _gi(handle, H100_1G, 1, 1)
    assert len(nvml.gpu()["gpu_instances"]) == 2


def test_library_and_driver_failures(sim):
    sim.create("h100-80gb:1")
    with sim.edit() as state:
        state["driver_loaded"] = False
    with pytest.raises(N.NVMLError_DriverNotLoaded):
        N.nvmlInit()
    with sim.edit() as state:
        state["driver_loaded"] = True
        state["library_present"] = False
    with pytest.raises(N.NVMLError_LibraryNotFound):
        N.nvmlInit()


def test_lost_gpu(nvml):
    nvml.create("h100-80gb:2")
    with nvml.edit() as state:
        state["gpus"][1]["lost"] = True
    with pytest.raises(N.nvmlExceptionClass(N.NVML_ERROR_GPU_IS_LOST)):
        N.nvmlDeviceGetHandleByIndex(1)
    assert N.nvmlDeviceGetCount() == 2


NOBODY_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import gpuops_nvml_sim, pynvml as N
os.setgid(65534); os.setuid(65534)
gpuops_nvml_sim.install(sys.argv[2])
N.nvmlInit()
h = N.nvmlDeviceGetHandleByIndex(0)
out = {"profile_id": N.nvmlDeviceGetGpuInstanceProfileInfo(h, 0).id}
for name, call in [("persistence", lambda: N.nvmlDeviceSetPersistenceMode(h, 1)),
                   ("compute", lambda: N.nvmlDeviceSetComputeMode(h, 3)),
                   ("mig", lambda: N.nvmlDeviceSetMigMode(h, 1))]:
    try:
        call(); out[name] = "ok"
    except N.NVMLError as e:
        out[name] = e.value
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_non_root_gets_no_permission_on_set_calls():
    shared = tempfile.mkdtemp(prefix="gpuops-sim-nobody-")
    try:
        os.chmod(shared, 0o777)
        path = os.path.join(shared, "state.json")
        simstate.StateStore(path).create(simstate.new_state(["h100-80gb"]))
        os.chmod(path, 0o666)
        result = subprocess.run([sys.executable, "-c", NOBODY_SCRIPT, SIMULATOR_DIR, path], capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"profile_id": 19, "persistence": 4, "compute": 4, "mig": 4}
    finally:
        shutil.rmtree(shared)


def _add_many(path, worker):
    store = simstate.StateStore(path)
    for offset in range(10):
        with store.transaction() as data:
            simstate.add_process(data, 0, 1000 * worker + offset, "w%d" % worker)


def test_concurrent_writers_do_not_lose_updates(sim):
    sim.create("h100-80gb:1")
    workers = [multiprocessing.Process(target=_add_many, args=(sim.path, w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(sim.gpu()["processes"]) == 40


PTH_PROBE = "import pynvml as N; N.nvmlInit(); print(N.nvmlDeviceGetCount(), N.nvmlDeviceGetName(N.nvmlDeviceGetHandleByIndex(0)))"


def test_pth_hook_activates_only_when_a_state_is_configured(sim, tmp_path):
    sim.create("a30:3")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    with open(os.path.join(SIMULATOR_DIR, "gpuops_nvml_sim.pth")) as handle:
        hook = handle.read()
    (site_dir / "gpuops_nvml_sim.pth").write_text(SIMULATOR_DIR + "\n" + hook)
    code = "import site; site.addsitedir(%r); " % str(site_dir) + PTH_PROBE
    env = dict(os.environ)
    active = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert active.stdout.split() == ["3", "NVIDIA", "A30"]
    env.pop(simstate.STATE_ENV)
    if not os.path.exists(simstate.DEFAULT_STATE_PATH):
        inactive = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert "NVML Shared Library Not Found" in inactive.stderr or inactive.returncode != 0


def test_cli_create_reboot_reset_process_fault(tmp_path):
    path = str(tmp_path / "cli.json")
    env = dict(os.environ, PYTHONPATH=SIMULATOR_DIR)

    def cli(*args, check=True):
        return subprocess.run([sys.executable, "-m", "gpuops_nvml_sim", "--state", path] + list(args),
                              capture_output=True, text=True, env=env, check=check)

    assert "created 3" in cli("create", "--gpus", "h100-80gb:2,l4").stdout
    assert cli("create", "--gpus", "l4", check=False).returncode == 1
    cli("process", "add", "--gpu", "1", "--pid", "7", "--name", "x")
    failed = cli("reset", "00000000:28:00.0", check=False)
    assert failed.returncode == 1 and "in use" in failed.stderr
    cli("process", "remove", "--pid", "7")
    assert "was reset" in cli("reset", "00000000:28:00.0").stdout
    cli("fault", "add", "nvmlDeviceSetMigMode", "--call", "1", "--code", "999")
    cli("reboot")
    shown = json.loads(cli("show").stdout)
    assert shown["boot_id"] == 2 and shown["faults"][0]["code"] == 999
    assert "unknown GPU model" in cli("create", "--force", "--gpus", "b300", check=False).stderr
