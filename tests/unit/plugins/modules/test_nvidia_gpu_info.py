"""nvidia_gpu_info driven through main() on the simulator, for every model."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest
import pynvml as N

from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_gpu_info
from gpuops_nvml_sim import state as simstate

MODELS = {
    # model: (name, pci id, memory MiB, architecture, capability, MIG profiles, resetless)
    "h100-80gb": ("NVIDIA H100 80GB HBM3", "0x233010DE", 81559, "hopper", "9.0",
                  ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.10gb+me", "1g.20gb"], True),
    "h200-141gb": ("NVIDIA H200", "0x233510DE", 143771, "hopper", "9.0",
                   ["1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb", "1g.18gb+me", "1g.35gb"], True),
    "a100-40gb": ("NVIDIA A100-SXM4-40GB", "0x20B010DE", 40960, "ampere", "8.0",
                  ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb", "1g.5gb+me", "1g.10gb"], False),
    "a100-80gb": ("NVIDIA A100-SXM4-80GB", "0x20B210DE", 81920, "ampere", "8.0",
                  ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.10gb+me", "1g.20gb"], False),
    "a30": ("NVIDIA A30", "0x20B710DE", 24576, "ampere", "8.0",
            ["1g.6gb", "2g.12gb", "4g.24gb", "1g.6gb+me", "2g.12gb+me"], False),
    "l4": ("NVIDIA L4", "0x27B810DE", 23034, "ada", "8.9", None, False),
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_field_for_each_model(sim, run, model):
    name, pci_id, memory_mib, architecture, capability, profiles, resetless = MODELS[model]
    sim.create("%s:2" % model)
    result = run(nvidia_gpu_info)
    assert not result.failed, result
    assert result["driver"] == {"version": "580.159.04", "nvml_version": "13.580.159.04",
                                "cuda_driver_version": "13.0"}
    assert result["ansible_facts"]["nvidia_gpus"] == result["gpus"]
    assert result["ansible_facts"]["nvidia_driver"] == result["driver"]
    assert [g["index"] for g in result["gpus"]] == [0, 1]
    gpu = result["gpus"][1]
    state = sim.gpu(1)
    assert gpu["uuid"] == state["uuid"] and gpu["pci_bus_id"] == state["bus_id"] == "00000000:28:00.0"
    assert (gpu["name"], gpu["pci_device_id"], gpu["memory_total_mib"]) == (name, pci_id, memory_mib)
    assert (gpu["architecture"], gpu["compute_capability"]) == (architecture, capability)
    assert gpu["persistence_mode"] is False and gpu["compute_mode"] == "default"
    assert gpu["processes"] == []
    if profiles is None:
        assert gpu["mig"] == {"capable": False, "current": None, "pending": None, "resetless_supported": False}
        return
    assert gpu["mig"]["capable"] is True
    assert (gpu["mig"]["current"], gpu["mig"]["pending"]) == ("disabled", "disabled")
    assert gpu["mig"]["resetless_supported"] is resetless
    assert [p["name"] for p in gpu["mig"]["profiles"]] == profiles
    assert gpu["mig"]["gpu_instances"] == []
    for profile in gpu["mig"]["profiles"]:
        assert len(profile["placements"]) >= profile["max_instances"] or profile["max_instances"] == 1
        assert all(p["size"] >= profile["slices"] for p in profile["placements"])


NVML_ERROR_NOT_SUPPORTED = 3


@pytest.mark.usefixtures("mig_lock")
@pytest.mark.parametrize("model, resetless", [("h100-80gb", True), ("h200-141gb", True), ("a100-40gb", False)])
def test_resetless_facts_agree_with_the_mig_engine_without_the_field(sim, run, model, resetless):
    """The driver does not answer NVML field 184 (resetless MIG): both fall back to the architecture.

    The facts once read only the field (False here on Hopper) while the MIG engine fell back to the
    architecture, so gpu_info said a reset was needed where nvidia_mig planned none.
    """
    from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mig

    sim.create(model)
    sim.fault("nvmlDeviceGetFieldValues", call=1, code=NVML_ERROR_NOT_SUPPORTED)
    facts = run(nvidia_gpu_info, {"gather": ["min"]})
    assert not facts.failed, facts
    assert sim.state()["faults"][0]["seen"] == 1  # the field read failed
    assert facts["gpus"][0]["mig"]["resetless_supported"] is resetless

    with sim.edit() as data:  # a fresh fault for the engine's own read
        data["faults"] = []
    sim.fault("nvmlDeviceGetFieldValues", call=1, code=NVML_ERROR_NOT_SUPPORTED)
    plan = run(nvidia_mig, {"mode": "enabled", "reset": "never"}, check_mode=True)
    assert not plan.failed, plan
    assert sim.state()["faults"][0]["seen"] == 1  # the engine asked, and was not answered
    assert plan["reset_required"] is (not resetless)
    assert [s["action"] for s in plan["plan"]] == ["set_mig_mode"]


def test_h100_profile_table_matches_the_real_gpu(sim, run):
    sim.create("h100-80gb:1")
    profiles = {p["name"]: p for p in run(nvidia_gpu_info)["gpus"][0]["mig"]["profiles"]}
    assert profiles["1g.20gb"] == {
        "name": "1g.20gb", "id": 15, "index": 9, "slices": 1, "memory_mib": 20096, "max_instances": 4,
        "multiprocessors": 26, "copy_engines": 1, "decoders": 1, "encoders": 0, "jpeg_engines": 1,
        "ofa_engines": 0, "placements": [{"start": s, "size": 2} for s in (0, 2, 4, 6)]}
    assert {n: (p["id"], p["max_instances"]) for n, p in profiles.items()} == {
        "1g.10gb": (19, 7), "2g.20gb": (14, 3), "3g.40gb": (9, 2), "4g.40gb": (5, 1), "7g.80gb": (0, 1),
        "1g.10gb+me": (20, 1), "1g.20gb": (15, 4)}


def _make_layout():
    """3g.40gb (one CI) at 0 and 3g.40gb split in 1c + 2c at 4, created through pynvml itself."""
    N.nvmlInit()
    try:
        handle = N.nvmlDeviceGetHandleByIndex(0)
        N.nvmlDeviceSetMigMode(handle, 1)
        full = N.nvmlDeviceCreateGpuInstanceWithPlacement(handle, 9, ctypes.byref(N.c_nvmlGpuInstancePlacement_t(0, 4)))
        N.nvmlGpuInstanceCreateComputeInstance(full, 2)
        split = N.nvmlDeviceCreateGpuInstanceWithPlacement(handle, 9, ctypes.byref(N.c_nvmlGpuInstancePlacement_t(4, 4)))
        N.nvmlGpuInstanceCreateComputeInstanceWithPlacement(split, 1, ctypes.byref(N.c_nvmlComputeInstancePlacement_t(0, 2)))
        N.nvmlGpuInstanceCreateComputeInstanceWithPlacement(split, 0, ctypes.byref(N.c_nvmlComputeInstancePlacement_t(2, 1)))
    finally:
        N.nvmlShutdown()


def test_mig_instances_with_uuids(sim, run):
    sim.create("h100-80gb:1")
    _make_layout()
    gpu = run(nvidia_gpu_info)["gpus"][0]
    assert gpu["mig"]["current"] == "enabled"
    instances = gpu["mig"]["gpu_instances"]
    assert [(gi["id"], gi["profile"], gi["placement"]) for gi in instances] == [
        (1, "3g.40gb", {"start": 0, "size": 4}), (2, "3g.40gb", {"start": 4, "size": 4})]
    assert [(ci["id"], ci["profile"], ci["slices"]) for ci in instances[0]["compute_instances"]] == [(0, "3g.40gb", 3)]
    assert [(ci["profile"], ci["placement"]["start"]) for ci in instances[1]["compute_instances"]] == [
        ("2c.3g.40gb", 0), ("1c.3g.40gb", 2)]
    state_uuids = sorted(ci["uuid"] for gi in sim.gpu()["gpu_instances"] for ci in gi["compute_instances"])
    assert sorted(ci["uuid"] for gi in instances for ci in gi["compute_instances"]) == state_uuids


def test_processes_are_reported_with_names(sim, run):
    sim.create("a100-80gb:2")
    sim.add_process(gpu=1, pid=31337, name="python3 train.py", memory_mib=2048)
    gpus = run(nvidia_gpu_info, {"gather": ["processes"]})["gpus"]
    assert gpus[0]["processes"] == []
    assert gpus[1]["processes"] == [{"pid": 31337, "name": "python3 train.py", "used_gpu_memory": 2048 * 2 ** 20,
                                     "gpu_instance_id": None, "compute_instance_id": None}]
    assert "profiles" not in gpus[1]["mig"] and "gpu_instances" not in gpus[1]["mig"]


def test_gather_min_reads_only_the_basics(sim, run):
    sim.create("h100-80gb:1")
    gpu = run(nvidia_gpu_info, {"gather": ["min"]})["gpus"][0]
    assert "processes" not in gpu and "profiles" not in gpu["mig"]
    calls = sim.library.calls
    assert "nvmlDeviceGetGpuInstanceProfileInfoV" not in calls
    assert "nvmlDeviceGetComputeRunningProcesses_v3" not in calls


def test_check_mode_is_supported_and_read_only(sim, run):
    sim.create("h100-80gb:2")
    before = sim.state()
    result = run(nvidia_gpu_info, check_mode=True)
    assert result["changed"] is False and len(result["gpus"]) == 2
    assert sim.writes() == [] and sim.state() == before


@pytest.mark.parametrize("devices,expected", [
    ([1], [1]), (["0", 2], [0, 2]), ("1,2", [1, 2]), ("[2, 0]", [0, 2]), ("all", [0, 1, 2]),
    (["00000000:28:00.0"], [1]), (["28:00.0"], [1]), (["0000:38:00"], [2]),
])
def test_selector_forms(sim, run, devices, expected):
    sim.create("h100-80gb:3")
    assert [g["index"] for g in run(nvidia_gpu_info, {"devices": devices})["gpus"]] == expected


def test_selector_by_uuid_case_insensitive(sim, run):
    sim.create("h100-80gb:3")
    uuid = sim.gpu(2)["uuid"]
    assert [g["index"] for g in run(nvidia_gpu_info, {"devices": [uuid.upper().replace("GPU-", "GPU-")]})["gpus"]] == [2]


@pytest.mark.parametrize("devices,message", [
    ([7], "no GPU with index 7: GPUs on this host: 0 = NVIDIA H100"),
    (["GPU-00000000-0000-0000-0000-000000000000"], "no GPU with UUID GPU-00000000"),
    (["0000:99:00.0"], "no GPU at PCI bus id 0000:99:00.0"),
    ([0, "00000000:18:00.0"], "GPU 0 is selected twice"),
    (["gpu zero"], "is not a GPU index, UUID"),
    ([], "devices is empty"),
    (["MIG-1b2c3d4e-0000-0000-0000-000000000000"], "is a MIG device, not a GPU"),
])
def test_selector_errors_list_the_gpus(sim, run, devices, message):
    sim.create("h100-80gb:2")
    result = run(nvidia_gpu_info, {"devices": devices})
    assert result.failed and message in result["msg"], result["msg"]
    assert result["error_kind"] == "invalid_selection"


def test_device_filter_keeps_matching_models(sim, run):
    sim.create("h100-80gb:1,a100-40gb:2,l4")
    result = run(nvidia_gpu_info, {"device_filter": ["0x20b010de"]})
    assert [g["index"] for g in result["gpus"]] == [1, 2]
    result = run(nvidia_gpu_info, {"devices": [0, 3], "device_filter": ["0x20B010DE", "0x27B810DE"]})
    assert [g["index"] for g in result["gpus"]] == [3]


def test_device_filter_that_matches_nothing_warns(sim, run):
    sim.create("h100-80gb:1")
    result = run(nvidia_gpu_info, {"device_filter": ["0x20B010DE"]})
    assert not result.failed and result["gpus"] == []
    assert "matched no GPU" in str(result["warnings"][0])


def test_bad_device_filter(sim, run):
    sim.create("h100-80gb:1")
    result = run(nvidia_gpu_info, {"device_filter": ["H100"]})
    assert result.failed and "PCI device ids such as 0x233010DE" in result["msg"]


@pytest.mark.parametrize("flag,kind,message", [
    ("library_present", "library_missing", "libnvidia-ml.so.1 not found: is the NVIDIA driver installed?"),
    ("driver_loaded", "driver_not_loaded", "driver not loaded"),
])
def test_missing_driver_fails_clearly_or_returns_empty_facts(sim, run, flag, kind, message):
    sim.create("h100-80gb:1")
    with sim.edit() as state:
        state[flag] = False
    result = run(nvidia_gpu_info)
    assert result.failed and result["error_kind"] == kind and message in result["msg"]
    result = run(nvidia_gpu_info, {"allow_missing": True})
    assert not result.failed and result["gpus"] == [] and message in result["unavailable_reason"]
    assert result["ansible_facts"] == {"nvidia_gpus": [], "nvidia_driver": {}}


def test_host_without_gpus(sim, run):
    sim.create("h100-80gb:1")
    with sim.edit() as state:
        state["gpus"] = []
    result = run(nvidia_gpu_info)
    assert result.failed and "reports no GPU" in result["msg"]
    assert run(nvidia_gpu_info, {"allow_missing": True})["unavailable_reason"].endswith("no GPU on this host")


def test_lost_gpu_is_named_with_the_fix(sim, run):
    sim.create("h100-80gb:2")
    with sim.edit() as state:
        state["gpus"][1]["lost"] = True
    result = run(nvidia_gpu_info)
    assert result.failed and result["error_kind"] == "gpu_lost"
    assert "the GPU is lost" in result["msg"] and "Xid" in result["msg"]


def test_error_on_nvml_failure_mid_gather(sim, run):
    sim.create("h100-80gb:1")
    sim.fault("nvmlDeviceGetMemoryInfo", call=1, code=999)
    result = run(nvidia_gpu_info)
    assert result.failed and "cannot read memory info on GPU 0 (NVIDIA H100 80GB HBM3" in result["msg"]


WITHOUT_PYNVML = r"""
import sys
sys.modules["pynvml"] = None
from ansible.module_utils.testing import patch_module_args
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_gpu_info
with patch_module_args({"allow_missing": %s}):
    nvidia_gpu_info.main()
"""


@pytest.mark.parametrize("allow_missing", [False, True])
def test_without_pynvml(allow_missing):
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PYNVML % allow_missing], capture_output=True, text=True,
                          env=dict(os.environ), check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if allow_missing:
        assert proc.returncode == 0 and "nvidia-ml-py" in result["unavailable_reason"]
    else:
        assert proc.returncode == 1 and result["failed"] and "nvidia-ml-py" in result["msg"]


# -- NVLink fabric and links (issue #17) --------------------------------------------------------------------------

NVLINK_CALL = "nvmlDeviceGetNvLinkState"
FABRIC_V_CALL = "nvmlDeviceGetGpuFabricInfoV"
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
NO_FABRIC = {"supported": False, "state": None, "status": None, "status_code": None, "clique_id": None,
             "cluster_uuid": None, "nvml_error": "not_supported"}
NO_NVLINK = {"supported": False, "active_links": None, "links": [], "ended_by": "not_supported"}


def _links(states):
    return [{"link": link, "active": bool(up)} for link, up in enumerate(states)]


def test_fabric_and_nvlink_on_an_8_gpu_nvswitch_h200_board(sim, run):
    sim.create("h200-141gb:8", nvswitch=True)
    cluster = sim.gpu(0)["fabric"]["cluster_uuid"]
    result = run(nvidia_gpu_info)
    assert not result.failed, result
    assert len(result["gpus"]) == 8
    for gpu in result["gpus"]:
        assert gpu["fabric"] == {"supported": True, "state": "completed", "status": "success", "status_code": 0,
                                 "clique_id": 1, "cluster_uuid": cluster, "nvml_error": None}
        assert gpu["nvlink"] == {"supported": True, "active_links": 18, "links": _links([1] * 18),
                                 "ended_by": "invalid_argument"}
    assert result["ansible_facts"]["nvidia_gpus"] == result["gpus"]
    # one fabric read per GPU; links 0-17 and the refused 18 per GPU
    assert sim.library.calls.count(FABRIC_V_CALL) == 8 and sim.library.calls.count(NVLINK_CALL) == 8 * 19


def test_nvswitch_board_whose_fabric_manager_has_not_finished(sim, run):
    """The states an operator must see: registration not started / in progress (fabric manager down or still
    probing), a probe that completed with an error, and links down."""
    sim.create("h100-80gb:8", nvswitch=True)
    with sim.edit() as data:
        simstate.set_fabric(data, [1], "not_started")
        simstate.set_fabric(data, [2], "in_progress")
        simstate.set_fabric(data, [3], status=23, clique_id=0, cluster_uuid=ZERO_UUID)
        simstate.set_fabric(data, [4], status=999)
        simstate.set_nvlink(data, [5], [0, 9], active=False)
    gpus = run(nvidia_gpu_info, {"gather": ["nvlink"]})["gpus"]
    assert [(g["fabric"]["supported"], g["fabric"]["state"]) for g in gpus[:3]] == [
        (True, "completed"), (True, "not_started"), (True, "in_progress")]
    assert (gpus[3]["fabric"]["state"], gpus[3]["fabric"]["status"], gpus[3]["fabric"]["status_code"],
            gpus[3]["fabric"]["clique_id"], gpus[3]["fabric"]["cluster_uuid"]) == (
        "completed", "insufficient_resources", 23, 0, ZERO_UUID)
    assert (gpus[4]["fabric"]["status"], gpus[4]["fabric"]["status_code"]) == ("unknown_error", 999)
    assert gpus[5]["nvlink"]["active_links"] == 16
    assert [entry["link"] for entry in gpus[5]["nvlink"]["links"] if not entry["active"]] == [0, 9]
    assert "profiles" not in gpus[0]["mig"] and "processes" not in gpus[0]  # only the nvlink subset was gathered


def test_fabric_and_nvlink_on_a_gpu_without_nvswitch(sim, run):
    """A single H100 as on the capture host (nvidia-smi -q: Fabric State N/A): NVML answers state NOT_SUPPORTED,
    so the GPU is in no fabric; its links answer, all down."""
    sim.create("h100-80gb:1")
    gpu = run(nvidia_gpu_info)["gpus"][0]
    assert gpu["fabric"] == {"supported": False, "state": "not_supported", "status": "unknown_error",
                             "status_code": 999, "clique_id": 0, "cluster_uuid": ZERO_UUID, "nvml_error": None}
    assert gpu["nvlink"] == {"supported": True, "active_links": 0, "links": _links([0] * 18),
                             "ended_by": "invalid_argument"}


@pytest.mark.parametrize("gpus, nvswitch, links", [
    ("a100-80gb", True, [1] * 12),
    ("a100-40gb", False, [0] * 12),
    ("a30", False, [0] * 4),
])
def test_gpus_before_hopper_have_links_but_no_fabric_facts(sim, run, gpus, nvswitch, links):
    sim.create(gpus, nvswitch=nvswitch)
    gpu = run(nvidia_gpu_info)["gpus"][0]
    assert gpu["fabric"] == NO_FABRIC
    assert gpu["nvlink"] == {"supported": True, "active_links": sum(links), "links": _links(links),
                             "ended_by": "not_supported"}


def test_gpu_without_nvlink(sim, run):
    sim.create("l4:2")
    for gpu in run(nvidia_gpu_info)["gpus"]:
        assert gpu["fabric"] == NO_FABRIC and gpu["nvlink"] == NO_NVLINK
    assert sim.library.calls.count(NVLINK_CALL) == 2  # link 0 only


def test_driver_without_the_fabric_and_nvlink_calls(sim, run):
    """A driver whose NVML lacks the functions (FUNCTION_NOT_FOUND): supported false, no failure."""
    sim.create("h200-141gb:2", nvswitch=True, absent_functions=[FABRIC_V_CALL, "nvmlDeviceGetGpuFabricInfo",
                                                                NVLINK_CALL])
    result = run(nvidia_gpu_info)
    assert not result.failed, result
    for gpu in result["gpus"]:
        assert gpu["fabric"] == dict(NO_FABRIC, nvml_error="function_not_found")
        assert gpu["nvlink"] == dict(NO_NVLINK, ended_by="function_not_found")


def test_driver_before_550_answers_through_the_v1_call(sim, run):
    sim.create("h200-141gb:2", nvswitch=True, absent_functions=[FABRIC_V_CALL])
    gpus = run(nvidia_gpu_info, {"gather": ["min"]})["gpus"]
    assert [(g["fabric"]["state"], g["fabric"]["nvml_error"]) for g in gpus] == [("completed", None)] * 2
    assert sim.library.calls.count("nvmlDeviceGetGpuFabricInfo") == 2


def test_binding_without_the_v_call_uses_v1(sim, run, monkeypatch):
    """nvidia-ml-py 12.535 (the oldest supported) has only nvmlDeviceGetGpuFabricInfo and its v1 struct."""
    sim.create("h100-80gb", nvswitch=True)
    monkeypatch.delattr(N, FABRIC_V_CALL)
    monkeypatch.delattr(N, "c_nvmlGpuFabricInfoV_t")
    gpu = run(nvidia_gpu_info, {"gather": ["min"]})["gpus"][0]
    assert (gpu["fabric"]["state"], gpu["fabric"]["supported"]) == ("completed", True)
    assert FABRIC_V_CALL not in sim.library.calls


@pytest.mark.parametrize("code, fabric_kind", [(3, "not_supported"), (999, None)])
def test_fabric_read_errors_never_fail_the_gather(sim, run, code, fabric_kind):
    """NOT_SUPPORTED from the V call is the answer; another error falls back to the v1 call, which answers."""
    sim.create("h100-80gb:2", nvswitch=True)
    sim.fault(FABRIC_V_CALL, call=2, code=code)
    result = run(nvidia_gpu_info, {"gather": ["min"]})
    assert not result.failed, result
    assert result["gpus"][0]["fabric"]["state"] == "completed"
    fabric = result["gpus"][1]["fabric"]
    if fabric_kind:
        assert fabric == dict(NO_FABRIC, nvml_error=fabric_kind)
    else:
        assert (fabric["state"], fabric["nvml_error"]) == ("completed", None)


def test_a_link_read_error_is_reported_on_that_link_only(sim, run):
    sim.create("h200-141gb", nvswitch=True)
    sim.fault(NVLINK_CALL, call=4, code=999)
    nvlink = run(nvidia_gpu_info, {"gather": ["nvlink"]})["gpus"][0]["nvlink"]
    assert nvlink["links"][3] == {"link": 3, "active": None}
    assert nvlink["active_links"] == 17 and len(nvlink["links"]) == 18


@pytest.mark.parametrize("function", [FABRIC_V_CALL, NVLINK_CALL])
def test_gpu_lost_during_the_fabric_or_link_reads_fails(sim, run, function):
    sim.create("h200-141gb:2", nvswitch=True)
    sim.fault(function, call=1, code=15)
    result = run(nvidia_gpu_info)
    assert result.failed and result["error_kind"] == "gpu_lost" and "GPU 0" in result["msg"]


def test_gather_min_reads_the_fabric_but_no_links(sim, run):
    sim.create("h200-141gb:8", nvswitch=True)
    gpus = run(nvidia_gpu_info, {"gather": ["min"]})["gpus"]
    assert all("nvlink" not in g and g["fabric"]["state"] == "completed" for g in gpus)
    assert NVLINK_CALL not in sim.library.calls and sim.library.calls.count(FABRIC_V_CALL) == 8
