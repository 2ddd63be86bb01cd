"""The simulated H100 80GB HBM3 answers pynvml exactly as the real one did (tests/fixtures capture)."""

from __future__ import annotations

import ctypes
import json
import os
import re

import pynvml as N

CAPTURE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "h100-80gb-hbm3", "nvml.json")
# Per-unit identity (differs between two real H100s) and a struct field pynvml itself writes before the call.
IDENTITY_FIELDS = {"uuid": r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                   "serial": r"^\d{13}$"}


def _call(fn, *args):
    try:
        return {"ok": fn(*args)}
    except N.NVMLError as exc:
        return {"error": str(exc), "code": exc.value}


def capture_like_the_real_one():
    """The same reads, in the same shape, as shared/gpu-captures/capture_nvml.py did on the real GPU."""
    out = {"driver_version": N.nvmlSystemGetDriverVersion(), "nvml_version": N.nvmlSystemGetNVMLVersion(),
           "cuda_driver_version": N.nvmlSystemGetCudaDriverVersion_v2(), "devices": []}
    for index in range(N.nvmlDeviceGetCount()):
        handle = N.nvmlDeviceGetHandleByIndex(index)
        pci = N.nvmlDeviceGetPciInfo(handle)
        mem = N.nvmlDeviceGetMemoryInfo(handle)
        device = {
            "index": index, "name": N.nvmlDeviceGetName(handle), "uuid": N.nvmlDeviceGetUUID(handle),
            "pci": {"busId": pci.busId, "pciDeviceId": hex(pci.pciDeviceId),
                    "pciSubSystemId": hex(pci.pciSubSystemId)},
            "memory": {"total": mem.total, "free": mem.free, "used": mem.used},
            "cuda_cc": _call(lambda h: list(N.nvmlDeviceGetCudaComputeCapability(h)), handle),
            "architecture": _call(N.nvmlDeviceGetArchitecture, handle),
            "persistence_mode": _call(N.nvmlDeviceGetPersistenceMode, handle),
            "compute_mode": _call(N.nvmlDeviceGetComputeMode, handle),
            "mig_mode": _call(N.nvmlDeviceGetMigMode, handle),
            "max_mig_device_count": _call(N.nvmlDeviceGetMaxMigDeviceCount, handle),
            "serial": _call(N.nvmlDeviceGetSerial, handle),
            "minor_number": _call(N.nvmlDeviceGetMinorNumber, handle),
            "board_part_number": _call(N.nvmlDeviceGetBoardPartNumber, handle),
            "power_limit_mw": _call(N.nvmlDeviceGetPowerManagementLimit, handle),
            "ecc_mode": _call(N.nvmlDeviceGetEccMode, handle),
            "accounting_mode": _call(N.nvmlDeviceGetAccountingMode, handle),
            "processes": _call(lambda h: [[p.pid, p.usedGpuMemory] for p in
                                          N.nvmlDeviceGetComputeRunningProcesses(h)], handle),
            "gpu_instance_profiles": [],
        }
        for profile_index in range(N.NVML_GPU_INSTANCE_PROFILE_COUNT):
            entry = {"profile_index": profile_index}
            try:
                info = N.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile_index)
            except N.NVMLError as exc:
                entry.update(error=str(exc), code=exc.value)
            else:
                entry["info"] = {f: getattr(info, f) for f, _ in info._fields_ if f != "version"}
                count = ctypes.c_uint(0)
                array = (N.c_nvmlGpuInstancePlacement_t * 32)()
                N.nvmlDeviceGetGpuInstancePossiblePlacements(handle, info.id, array, ctypes.byref(count))
                entry["placements"] = [[array[k].start, array[k].size] for k in range(count.value)]
                entry["remaining_capacity"] = N.nvmlDeviceGetGpuInstanceRemainingCapacity(handle, info.id)
            device["gpu_instance_profiles"].append(entry)
        out["devices"].append(device)
    return out


def _expected():
    with open(CAPTURE) as handle:
        data = json.load(handle)
    data.pop("pynvml_file")
    for device in data["devices"]:
        device.pop("get_gpu_instances_while_disabled")
        for profile in device["gpu_instance_profiles"]:
            if "info" in profile:
                profile["info"].pop("version")
    return data


def test_simulated_h100_matches_the_real_capture_field_for_field(sim):
    sim.create("h100-80gb:1")
    with sim.edit() as state:
        # The capture was taken with persistence on (legacy flag) and at this PCI address.
        state["gpus"][0]["persistence_mode"] = 1
        state["gpus"][0]["bus_id"] = "00000000:00:06.0"
    N.nvmlInit()
    try:
        actual = capture_like_the_real_one()
    finally:
        N.nvmlShutdown()
    expected = _expected()
    for device_actual, device_expected in zip(actual["devices"], expected["devices"]):
        for field, pattern in IDENTITY_FIELDS.items():
            value = device_actual.pop(field)
            value = value["ok"] if isinstance(value, dict) else value
            assert re.match(pattern, value), (field, value)
            device_expected.pop(field)
    assert actual == expected


def test_every_model_reports_consistent_profiles(sim):
    sim.create("h100-80gb,h200-141gb,a100-40gb,a100-80gb,a30,l4")
    N.nvmlInit()
    try:
        for index in range(N.nvmlDeviceGetCount()):
            handle = N.nvmlDeviceGetHandleByIndex(index)
            if index == 5:
                try:
                    N.nvmlDeviceGetMigMode(handle)
                except N.NVMLError_NotSupported:
                    continue
                raise AssertionError("L4 must not support MIG")
            assert N.nvmlDeviceGetMigMode(handle) == [0, 0]
            for profile_index in range(N.NVML_GPU_INSTANCE_PROFILE_COUNT):
                try:
                    info = N.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile_index)
                except (N.NVMLError_NotSupported, N.NVMLError_InvalidArgument):
                    continue
                assert info.name.startswith("MIG ")
                assert N.nvmlDeviceGetGpuInstanceRemainingCapacity(handle, info.id) == min(
                    info.instanceCount, len(placements(handle, info.id)))
    finally:
        N.nvmlShutdown()


def placements(handle, profile_id):
    count = ctypes.c_uint(0)
    N.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, None, ctypes.byref(count))
    array = (N.c_nvmlGpuInstancePlacement_t * count.value)()
    N.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, array, ctypes.byref(count))
    result = []
    for k in range(count.value):
        if not any(array[k].start < s + z and s < array[k].start + array[k].size for s, z in result):
            result.append((array[k].start, array[k].size))
    return result
