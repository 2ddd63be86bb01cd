"""NVLink links and the NVLink fabric in the simulator, driven through the real pynvml (docs/simulator.md,
"NVLink and the fabric" says which answers come from captures and which from NVIDIA's documentation)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import uuid

import pytest
import pynvml as N

import gpuops_nvml_sim
from gpuops_nvml_sim import state as simstate

SIMULATOR_DIR = os.path.dirname(os.path.dirname(os.path.abspath(gpuops_nvml_sim.__file__)))
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def nvml(sim):
    """The simulated node; nvmlInit after create, nvmlShutdown at the end."""
    yield sim
    try:
        N.nvmlShutdown()
    except N.NVMLError:
        pass


def _create(sim, gpus, **kwargs):
    sim.create(gpus, **kwargs)
    N.nvmlInit()
    return [N.nvmlDeviceGetHandleByIndex(i) for i in range(N.nvmlDeviceGetCount())]


def _fabric(handle, struct=None, call="nvmlDeviceGetGpuFabricInfoV"):
    info = (struct or N.c_nvmlGpuFabricInfoV_t)()
    getattr(N, call)(handle, ctypes.byref(info))
    return info


def _uuid(info):
    return str(uuid.UUID(bytes=bytes(bytearray(info.clusterUuid))))


def _links(handle):
    """Every link's state up to the first link number NVML refuses, and the exception class that refused it."""
    states = []
    for link in range(N.NVML_NVLINK_MAX_LINKS):
        try:
            states.append(N.nvmlDeviceGetNvLinkState(handle, link))
        except N.NVMLError as exc:
            return states, type(exc)
    return states, None


def test_nvswitch_h200_board_registers_every_gpu_in_one_clique(nvml):
    handles = _create(nvml, "h200-141gb:8", nvswitch=True)
    state = nvml.state()
    assert state["nvswitch"] is True
    uuids = set()
    for handle in handles:
        for struct, call in ((N.c_nvmlGpuFabricInfo_v2_t, "nvmlDeviceGetGpuFabricInfoV"),
                             (N.c_nvmlGpuFabricInfo_v3_t, "nvmlDeviceGetGpuFabricInfoV"),
                             (N.c_nvmlGpuFabricInfo_t, "nvmlDeviceGetGpuFabricInfo")):
            info = _fabric(handle, struct, call)
            assert (info.state, info.status, info.cliqueId) == (N.NVML_GPU_FABRIC_STATE_COMPLETED, N.NVML_SUCCESS,
                                                                simstate.DEFAULT_CLIQUE_ID)
            uuids.add(_uuid(info))
            if hasattr(info, "healthMask"):
                assert info.healthMask == 0  # every health bit NOT_SUPPORTED, as reported for H100
        states, refused = _links(handle)
        assert states == [N.NVML_FEATURE_ENABLED] * 18 and refused is N.NVMLError_InvalidArgument
    assert uuids == {state["gpus"][0]["fabric"]["cluster_uuid"]} and ZERO_UUID not in uuids


def test_nvswitch_board_takes_a_clique_id_and_cluster_uuid(nvml):
    cluster = "dc6e40c4-d722-4357-9ba6-5291dd461278"
    handles = _create(nvml, "h100-80gb:4", nvswitch=True, clique_id=32766, cluster_uuid=cluster)
    info = _fabric(handles[3])
    assert (info.cliqueId, _uuid(info)) == (32766, cluster)


def test_hopper_without_nvswitch_answers_state_not_supported(nvml):
    """A Hopper GPU answers the fabric query off an NVSwitch board: state NOT_SUPPORTED, status UNKNOWN_ERROR,
    clique 0, zero cluster UUID; its 18 links answer, all down."""
    for handle in _create(nvml, "h100-80gb:1,h200-141gb:2"):
        for call, struct in (("nvmlDeviceGetGpuFabricInfoV", None), ("nvmlDeviceGetGpuFabricInfo", N.c_nvmlGpuFabricInfo_t)):
            info = _fabric(handle, struct, call)
            assert (info.state, info.status, info.cliqueId, _uuid(info)) == (
                N.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED, N.NVML_ERROR_UNKNOWN, 0, ZERO_UUID)
        states, refused = _links(handle)
        assert states == [N.NVML_FEATURE_DISABLED] * 18 and refused is N.NVMLError_InvalidArgument


@pytest.mark.parametrize("model, nvswitch, links, refused", [
    ("a100-80gb", True, [1] * 12, N.NVMLError_NotSupported),
    ("a100-40gb", False, [0] * 12, N.NVMLError_NotSupported),
    ("a30", False, [0] * 4, N.NVMLError_NotSupported),
    ("l4", False, [], N.NVMLError_NotSupported),
])
def test_gpus_before_hopper_report_no_fabric(nvml, model, nvswitch, links, refused):
    """NVML documents the fabric query for Hopper and later: older GPUs answer NOT_SUPPORTED, even an A100 on an
    NVSwitch board (whose links are up); a GPU's links past its last one answer NOT_SUPPORTED."""
    handle = _create(nvml, model, nvswitch=nvswitch)[0]
    for call, struct in (("nvmlDeviceGetGpuFabricInfoV", None), ("nvmlDeviceGetGpuFabricInfo", N.c_nvmlGpuFabricInfo_t)):
        with pytest.raises(N.NVMLError_NotSupported):
            _fabric(handle, struct, call)
    assert _links(handle) == (links, refused)


def test_fabric_info_v_checks_the_struct_version(nvml):
    handle = _create(nvml, "h100-80gb", nvswitch=True)[0]
    info = N.c_nvmlGpuFabricInfoV_t()
    info.version = 0x01000020
    with pytest.raises(N.NVMLError) as raised:
        N.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
    assert raised.value.value == N.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_link_numbers_past_the_drivers_maximum_are_invalid(nvml):
    handle = _create(nvml, "h200-141gb", nvswitch=True)[0]
    for link in (18, 35, 1000):
        with pytest.raises(N.NVMLError_InvalidArgument):
            N.nvmlDeviceGetNvLinkState(handle, link)


def test_lost_gpu_answers_gpu_is_lost(nvml):
    handles = _create(nvml, "h200-141gb:2", nvswitch=True)
    with nvml.edit() as data:
        data["gpus"][1]["lost"] = True
    with pytest.raises(N.NVMLError_GpuIsLost):
        _fabric(handles[1])
    with pytest.raises(N.NVMLError_GpuIsLost):
        N.nvmlDeviceGetNvLinkState(handles[1], 0)
    assert _fabric(handles[0]).state == N.NVML_GPU_FABRIC_STATE_COMPLETED


def test_fabric_manager_states_and_links_change_at_run_time(nvml):
    handles = _create(nvml, "h200-141gb:8", nvswitch=True)
    with nvml.edit() as data:
        simstate.set_fabric(data, [2], "in_progress")
        simstate.set_fabric(data, [3], "completed", status=N.NVML_ERROR_INSUFFICIENT_RESOURCES, clique_id=0,
                            cluster_uuid=ZERO_UUID)
        simstate.set_nvlink(data, [4], [5, 17], active=False)
        simstate.set_nvlink(data, [5], active=False)
    assert _fabric(handles[2]).state == N.NVML_GPU_FABRIC_STATE_IN_PROGRESS
    info = _fabric(handles[3])
    assert (info.state, info.status, info.cliqueId, _uuid(info)) == (
        N.NVML_GPU_FABRIC_STATE_COMPLETED, N.NVML_ERROR_INSUFFICIENT_RESOURCES, 0, ZERO_UUID)
    states = _links(handles[4])[0]
    assert [link for link, up in enumerate(states) if not up] == [5, 17]
    assert _links(handles[5])[0] == [N.NVML_FEATURE_DISABLED] * 18
    assert _links(handles[6])[0] == [N.NVML_FEATURE_ENABLED] * 18


def test_refusals_of_fabric_and_link_changes(sim):
    sim.create("l4,a100-40gb,h100-80gb")
    with sim.edit() as data:
        with pytest.raises(simstate.SimulatorError, match="does not report an NVLink fabric"):
            simstate.set_fabric(data, [1], "completed")
        with pytest.raises(simstate.SimulatorError, match="has no NVLink"):
            simstate.set_nvlink(data, [0], active=True)
        with pytest.raises(simstate.SimulatorError, match="links 0-17, not 18"):
            simstate.set_nvlink(data, [2], [18], active=True)
        with pytest.raises(simstate.SimulatorError, match="fabric state must be one of"):
            simstate.set_fabric(data, [2], "done")
        with pytest.raises(simstate.SimulatorError, match="not a UUID"):
            simstate.set_fabric(data, [2], cluster_uuid="cluster-1")
    with pytest.raises(simstate.SimulatorError, match="l4 never sit on an NVSwitch board"):
        simstate.new_state(["h100-80gb", "l4"], nvswitch=True)
    with pytest.raises(simstate.SimulatorError, match="a30 never sit on an NVSwitch board"):
        simstate.new_state(["a30"], nvswitch=True)


def test_a_state_written_before_nvlink_was_modelled_gets_the_defaults(nvml):
    nvml.create("h100-80gb,l4")
    with nvml.edit() as data:
        for gpu in data["gpus"]:
            del gpu["fabric"], gpu["nvlink"]
        del data["nvswitch"], data["absent_functions"]
    gpuops_nvml_sim.install(nvml.path)
    N.nvmlInit()
    h100, l4 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
    assert _fabric(h100).state == N.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED
    assert _links(h100) == ([N.NVML_FEATURE_DISABLED] * 18, N.NVMLError_InvalidArgument)
    with pytest.raises(N.NVMLError_NotSupported):
        _fabric(l4)


def test_a_driver_without_a_function_answers_function_not_found(nvml):
    """A symbol the driver lacks fails pynvml's own lookup (as on a driver before 550 for the V call)."""
    handle = _create(nvml, "h100-80gb", nvswitch=True, absent_functions=["nvmlDeviceGetGpuFabricInfoV"])[0]
    with pytest.raises(N.NVMLError_FunctionNotFound):
        _fabric(handle)
    assert _fabric(handle, N.c_nvmlGpuFabricInfo_t, "nvmlDeviceGetGpuFabricInfo").state == 3
    assert "nvmlDeviceGetGpuFabricInfoV" not in nvml.library.calls  # never reached the library
    with nvml.edit() as data:
        simstate.set_function_absent(data, "nvmlDeviceGetGpuFabricInfoV", absent=False)
        simstate.set_function_absent(data, "nvmlDeviceGetNvLinkState")
    N.nvmlShutdown()
    gpuops_nvml_sim.install(nvml.path)  # a new process loads the library anew
    N.nvmlInit()
    handle = N.nvmlDeviceGetHandleByIndex(0)
    assert _fabric(handle).state == 3
    with pytest.raises(N.NVMLError_FunctionNotFound):
        N.nvmlDeviceGetNvLinkState(handle, 0)


def _cli(state_path, *args):
    env = dict(os.environ, PYTHONPATH=SIMULATOR_DIR)
    env.pop(simstate.STATE_ENV, None)
    return subprocess.run([sys.executable, "-m", "gpuops_nvml_sim", "--state", state_path] + list(args),
                          capture_output=True, text=True, env=env, check=False)


def test_cli_nvswitch_fabric_nvlink_symbol(tmp_path):
    path = str(tmp_path / "state.json")
    assert _cli(path, "create", "--gpus", "h200-141gb:8", "--nvswitch", "--clique-id", "7",
                "--cluster-uuid", "9c6f5af3-53bf-49b5-a436-b66766c413c3",
                "--absent-function", "nvmlDeviceGetGpuFabricInfo").returncode == 0
    assert _cli(path, "fabric", "--gpu", "1", "--gpu", "00000000:38:00.0", "--state", "not_started").returncode == 0
    assert _cli(path, "nvlink", "down", "--gpu", "0", "--link", "3").returncode == 0
    assert _cli(path, "symbol", "remove", "nvmlDeviceGetNvLinkState").returncode == 0
    assert _cli(path, "symbol", "restore", "nvmlDeviceGetGpuFabricInfo").returncode == 0
    state = json.loads(_cli(path, "show").stdout)
    assert state["nvswitch"] is True and state["absent_functions"] == ["nvmlDeviceGetNvLinkState"]
    assert [g["fabric"]["state"] for g in state["gpus"]] == [3, 1, 1, 3, 3, 3, 3, 3]
    assert {(g["fabric"]["clique_id"], g["fabric"]["cluster_uuid"]) for g in state["gpus"]} == {
        (7, "9c6f5af3-53bf-49b5-a436-b66766c413c3")}
    assert [sum(g["nvlink"]) for g in state["gpus"]] == [17] + [18] * 7
    refused = _cli(path, "fabric", "--gpu", "9", "--state", "completed")
    assert refused.returncode == 1 and "no simulated GPU '9'" in refused.stderr
    refused = _cli(tmp_path.joinpath("other.json").as_posix(), "create", "--gpus", "l4:2", "--nvswitch")
    assert refused.returncode == 1 and "never sit on an NVSwitch board" in refused.stderr
