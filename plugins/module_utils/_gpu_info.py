# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read what NVML knows about the GPUs of a node. Plain Python: no Ansible imports."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import uuid as uuidlib

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import SELECTOR_SPEC, argument_spec
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import COMPUTE_MODES, NvmlError, text

SUBSETS = ("mig_profiles", "mig_instances", "processes", "nvlink")

GPU_INFO_SPEC = argument_spec(SELECTOR_SPEC, {
    "gather": {"type": "list", "elements": "str", "default": ["all"],
               "choices": ["all", "min", "mig_profiles", "mig_instances", "processes", "nvlink"]},
    "allow_missing": {"type": "bool", "default": False},
})
# Failures that mean "no usable NVIDIA stack here" (allow_missing turns them into empty facts).
UNAVAILABLE_KINDS = ("pynvml_missing", "library_missing", "driver_not_loaded", "no_gpu")

ARCHITECTURES = {
    2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere", 8: "ada", 9: "hopper",
    10: "blackwell",
}
_SKIPPED_PROFILE_ERRORS = ("not_supported", "invalid_argument")
# nvmlGpuFabricState_t.
FABRIC_STATES = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}
# Errors that fail the whole gather even where a fact is optional: the GPU or the driver is gone.
_FATAL_KINDS = ("gpu_lost", "driver_not_loaded", "uninitialized")
# Answers to nvmlDeviceGetNvLinkState that end the walk over link numbers: past the GPU's last link, or no NVLink.
_NVLINK_END_KINDS = ("not_supported", "invalid_argument", "function_not_found")
_MIB = 1024 * 1024


def profile_name(info):
    """`MIG 3g.40gb` -> `3g.40gb`."""
    name = text(info.name)
    return name[4:] if name.startswith("MIG ") else name


def _placements(session, gpu, call, owner, profile_id, struct):
    count = ctypes.c_uint(0)
    session.call(call, owner, profile_id, None, ctypes.byref(count), what="count placements", gpu=gpu)
    if not count.value:
        return []
    entries = (struct * count.value)()
    session.call(call, owner, profile_id, entries, ctypes.byref(count), what="list placements", gpu=gpu)
    return [{"start": entries[i].start, "size": entries[i].size} for i in range(count.value)]


def gpu_instance_profiles(session, gpu):
    """Every GPU-instance profile this GPU offers (readable with MIG off), in profile-index order."""
    nvml = session.pynvml
    profiles = []
    for index in range(nvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            info = session.call("nvmlDeviceGetGpuInstanceProfileInfo", gpu.handle, index,
                                what="read MIG profile %d" % index, gpu=gpu)
        except NvmlError as exc:
            if exc.kind in _SKIPPED_PROFILE_ERRORS:
                continue
            raise
        profiles.append({
            "name": profile_name(info),
            "id": info.id,
            "index": index,
            "slices": info.sliceCount,
            "memory_mib": info.memorySizeMB,
            "max_instances": info.instanceCount,
            "multiprocessors": info.multiprocessorCount,
            "copy_engines": info.copyEngineCount,
            "decoders": info.decoderCount,
            "encoders": info.encoderCount,
            "jpeg_engines": info.jpegCount,
            "ofa_engines": info.ofaCount,
            "placements": _placements(session, gpu, "nvmlDeviceGetGpuInstancePossiblePlacements", gpu.handle,
                                      info.id, nvml.c_nvmlGpuInstancePlacement_t),
        })
    return profiles


def compute_instance_profiles(session, gpu, gpu_instance):
    """The compute-instance profiles a GPU instance offers."""
    nvml = session.pynvml
    profiles = []
    for index in range(nvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
        try:
            info = session.call("nvmlGpuInstanceGetComputeInstanceProfileInfo", gpu_instance, index,
                                nvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                                what="read compute-instance profile %d" % index, gpu=gpu)
        except NvmlError as exc:
            if exc.kind in _SKIPPED_PROFILE_ERRORS:
                continue
            raise
        profiles.append({"name": profile_name(info), "id": info.id, "index": index, "slices": info.sliceCount,
                         "max_instances": info.instanceCount})
    return profiles


def mig_device_uuids(session, gpu):
    """{(gpu_instance_id, compute_instance_id): MIG UUID} for the MIG devices that exist now."""
    uuids = {}
    for handle in session.mig_device_handles(gpu):
        key = (session.call("nvmlDeviceGetGpuInstanceId", handle, what="read a GPU-instance id", gpu=gpu),
               session.call("nvmlDeviceGetComputeInstanceId", handle, what="read a compute-instance id", gpu=gpu))
        uuids[key] = text(session.call("nvmlDeviceGetUUID", handle, what="read a MIG device UUID", gpu=gpu))
    return uuids


def mig_instances(session, gpu, profiles=None):
    """The GPU instances on a GPU with MIG enabled, each with its compute instances, ordered by placement."""
    nvml = session.pynvml
    profiles = profiles if profiles is not None else gpu_instance_profiles(session, gpu)
    uuids = mig_device_uuids(session, gpu)
    instances = []
    for profile in profiles:
        count = ctypes.c_uint(0)
        handles = (nvml.c_nvmlGpuInstance_t * max(profile["max_instances"], 1))()
        session.call("nvmlDeviceGetGpuInstances", gpu.handle, profile["id"], handles, ctypes.byref(count),
                     what="list %s GPU instances" % profile["name"], gpu=gpu)
        for position in range(count.value):
            handle = handles[position]
            info = session.call("nvmlGpuInstanceGetInfo", handle, what="read a GPU instance", gpu=gpu)
            computes = []
            for ci_profile in compute_instance_profiles(session, gpu, handle):
                ci_count = ctypes.c_uint(0)
                ci_handles = (nvml.c_nvmlComputeInstance_t * max(ci_profile["max_instances"], 1))()
                session.call("nvmlGpuInstanceGetComputeInstances", handle, ci_profile["id"], ci_handles,
                             ctypes.byref(ci_count), what="list compute instances", gpu=gpu)
                for ci_position in range(ci_count.value):
                    ci_info = session.call("nvmlComputeInstanceGetInfo", ci_handles[ci_position],
                                           what="read a compute instance", gpu=gpu)
                    computes.append({
                        "id": ci_info.id,
                        "profile": ci_profile["name"],
                        "profile_id": ci_profile["id"],
                        "slices": ci_profile["slices"],
                        "placement": {"start": ci_info.placement.start, "size": ci_info.placement.size},
                        "uuid": uuids.get((info.id, ci_info.id)),
                    })
            computes.sort(key=lambda ci: (ci["placement"]["start"], ci["id"]))
            instances.append({
                "id": info.id,
                "profile": profile["name"],
                "profile_id": profile["id"],
                "placement": {"start": info.placement.start, "size": info.placement.size},
                "compute_instances": computes,
            })
    instances.sort(key=lambda gi: (gi["placement"]["start"], gi["id"]))
    return instances


def _optional(session, name, gpu, *args):
    """A value some GPUs do not report (NotSupported -> None)."""
    try:
        return session.call(name, gpu.handle, *args, what=name, gpu=gpu)
    except NvmlError as exc:
        if exc.kind == "not_supported":
            return None
        raise


def _status_name(session, code):
    """A probe status (an nvmlReturn_t inside a struct) as the collection's error keywords: `success`,
    `not_supported`, ..., `unknown_error` (999), else `nvml_error_<code>`."""
    if code == 0:
        return "success"
    kind = session.error(session.pynvml.NVMLError(code), "read the fabric probe status").kind
    if kind != "nvml":
        return kind
    return "unknown_error" if code == 999 else "nvml_error_%d" % code


def fabric_info(session, gpu):
    """The GPU's place in an NVLink fabric (NVSwitch systems), as NVML reports it; never fails for a GPU or driver
    that does not answer (`supported` false, `nvml_error` says why).

    nvmlDeviceGetGpuFabricInfoV where the binding and the driver have it (driver 550 and later), else
    nvmlDeviceGetGpuFabricInfo (v1 struct, the only one in nvidia-ml-py 12.535).
    """
    nvml = session.pynvml
    facts = {"supported": False, "state": None, "status": None, "status_code": None, "clique_id": None,
             "cluster_uuid": None, "nvml_error": "function_not_found"}
    readers = [(name, struct) for name, struct in (("nvmlDeviceGetGpuFabricInfoV", "c_nvmlGpuFabricInfoV_t"),
                                                   ("nvmlDeviceGetGpuFabricInfo", "c_nvmlGpuFabricInfo_t"))
               if hasattr(nvml, name) and hasattr(nvml, struct)]
    for name, struct in readers:
        info = getattr(nvml, struct)()
        try:
            session.call(name, gpu.handle, ctypes.byref(info), what="read the NVLink fabric info", gpu=gpu)
        except NvmlError as exc:
            if exc.kind in _FATAL_KINDS:
                raise
            facts["nvml_error"] = exc.kind
            if exc.kind == "not_supported":
                return facts
            continue  # the driver lacks the call, or refuses this struct version: the older call may answer
        facts.update({
            "supported": info.state != 0,
            "state": FABRIC_STATES.get(info.state, "unknown_%d" % info.state),
            "status": _status_name(session, info.status),
            "status_code": info.status,
            "clique_id": info.cliqueId,
            "cluster_uuid": str(uuidlib.UUID(bytes=bytes(bytearray(info.clusterUuid)))),
            "nvml_error": None,
        })
        return facts
    return facts


def nvlink_links(session, gpu):
    """Each NVLink link's state, link 0 upwards until NVML says the link does not exist (NOT_SUPPORTED or
    INVALID_ARGUMENT); `supported` false where link 0 already gets that answer, or the driver lacks the call.
    `ended_by` is that answer (null when every link number up to NVML_NVLINK_MAX_LINKS answered)."""
    nvml = session.pynvml
    links = []
    ended_by = None
    for link in range(nvml.NVML_NVLINK_MAX_LINKS):
        try:
            active = session.call("nvmlDeviceGetNvLinkState", gpu.handle, link, what="read NVLink %d" % link,
                                  gpu=gpu)
        except NvmlError as exc:
            if exc.kind in _FATAL_KINDS:
                raise
            if exc.kind in _NVLINK_END_KINDS:
                ended_by = exc.kind
                break
            active = None
        links.append({"link": link, "active": None if active is None else active == nvml.NVML_FEATURE_ENABLED})
    return {
        "supported": bool(links),
        "active_links": len([entry for entry in links if entry["active"]]) if links else None,
        "links": links,
        "ended_by": ended_by,
    }


def describe_gpu(session, gpu, subsets=SUBSETS):
    """Facts for one GPU; `subsets` limits the costlier parts (MIG profiles/instances, processes)."""
    memory = session.call("nvmlDeviceGetMemoryInfo", gpu.handle, what="read memory info", gpu=gpu)
    capability = session.call("nvmlDeviceGetCudaComputeCapability", gpu.handle, what="read the compute capability",
                              gpu=gpu)
    architecture = _optional(session, "nvmlDeviceGetArchitecture", gpu)
    persistence = _optional(session, "nvmlDeviceGetPersistenceMode", gpu)
    compute_mode = _optional(session, "nvmlDeviceGetComputeMode", gpu)  # NotSupported is a fact here
    mig_mode = session.mig_mode(gpu)
    facts = {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "pci_bus_id": gpu.bus_id,
        "pci_device_id": gpu.pci_device_id,
        "pci_subsystem_id": gpu.pci_subsystem_id,
        "memory_total_mib": memory.total // _MIB,
        "memory_total_bytes": memory.total,
        "architecture": ARCHITECTURES.get(architecture, "unknown" if architecture is None else str(architecture)),
        "compute_capability": "%d.%d" % tuple(capability),
        "persistence_mode": None if persistence is None else persistence == 1,
        "compute_mode": COMPUTE_MODES.get(compute_mode),
        "mig": {
            "capable": mig_mode is not None,
            "current": None if mig_mode is None else ("enabled" if mig_mode[0] else "disabled"),
            "pending": None if mig_mode is None else ("enabled" if mig_mode[1] else "disabled"),
            "resetless_supported": session.resetless_mig(gpu) if mig_mode is not None else False,
        },
        "fabric": fabric_info(session, gpu),
    }
    if mig_mode is not None and ("mig_profiles" in subsets or "mig_instances" in subsets):
        profiles = gpu_instance_profiles(session, gpu)
        if "mig_profiles" in subsets:
            facts["mig"]["profiles"] = profiles
        if "mig_instances" in subsets:
            facts["mig"]["gpu_instances"] = mig_instances(session, gpu, profiles) if mig_mode[0] else []
    if "processes" in subsets:
        facts["processes"] = session.compute_processes(gpu.handle, gpu)
    if "nvlink" in subsets:
        facts["nvlink"] = nvlink_links(session, gpu)
    return facts


def subsets_of(gather_option):
    """The `gather` option as the subsets to read."""
    requested = set(gather_option or ["all"])
    return SUBSETS if "all" in requested else tuple(s for s in SUBSETS if s in requested)


def gather(session, devices="all", device_filter=None, subsets=SUBSETS):
    if not session.gpus():
        raise NvmlError("the NVIDIA driver is loaded but NVML reports no GPU on this host", kind="no_gpu")
    gpus = session.select(devices, device_filter)
    return {
        "driver": {
            "version": session.driver_version(),
            "nvml_version": session.nvml_version(),
            "cuda_driver_version": session.cuda_driver_version(),
        },
        "gpus": [describe_gpu(session, gpu, subsets) for gpu in gpus],
    }
