"""A stand-in for libnvidia-ml.so.1: every attribute is an NVML C entry point with ctypes semantics.

pynvml calls these with exactly the arguments it would hand to the C library (ctypes scalars, `byref()`
out-parameters, arrays, structs it allocated) and checks the nvmlReturn_t each one returns, so all of
pynvml's own wrapper code runs unchanged on top of it.
"""

from __future__ import annotations

import ctypes
import os
import re
import uuid as uuidlib

from . import models
from .state import NVML_ERROR_IN_USE, StateStore, new_mig_uuid, reset_gpus
from .state import SimulatorError, gpu_nvlink

SUCCESS = 0
ERROR_UNINITIALIZED = 1
ERROR_INVALID_ARGUMENT = 2
ERROR_NOT_SUPPORTED = 3
ERROR_NO_PERMISSION = 4
ERROR_NOT_FOUND = 6
ERROR_INSUFFICIENT_SIZE = 7
ERROR_DRIVER_NOT_LOADED = 9
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_GPU_IS_LOST = 15
ERROR_RESET_REQUIRED = 16
ERROR_IN_USE = NVML_ERROR_IN_USE
ERROR_INSUFFICIENT_RESOURCES = 23
ERROR_UNKNOWN = 999
ERROR_ARGUMENT_VERSION_MISMATCH = 25
# NVML_NVLINK_MAX_LINKS of driver 580's nvml.h (pynvml 13.6xx says 36): link indices past it are invalid.
DRIVER_NVLINK_MAX_LINKS = 18
# nvmlGpuFabricInfo_v2 / _v3: the struct versions nvmlDeviceGetGpuFabricInfoV accepts.
FABRIC_INFO_VERSIONS = (0x02000024, 0x3000028)

ERROR_STRINGS = {
    SUCCESS: b"Success",
    ERROR_UNINITIALIZED: b"Uninitialized",
    ERROR_INVALID_ARGUMENT: b"Invalid Argument",
    ERROR_NOT_SUPPORTED: b"Not Supported",
    ERROR_NO_PERMISSION: b"Insufficient Permissions",
    5: b"Already Initialized",
    ERROR_NOT_FOUND: b"Not Found",
    ERROR_INSUFFICIENT_SIZE: b"Insufficient Size",
    ERROR_DRIVER_NOT_LOADED: b"Driver Not Loaded",
    ERROR_LIBRARY_NOT_FOUND: b"NVML Shared Library Not Found",
    13: b"Function Not Found",
    ERROR_GPU_IS_LOST: b"GPU is lost",
    ERROR_RESET_REQUIRED: b"GPU requires restart",
    ERROR_IN_USE: b"In use by another client",
    ERROR_INSUFFICIENT_RESOURCES: b"Insufficient resources",
    ERROR_UNKNOWN: b"Unknown Error",
    ERROR_ARGUMENT_VERSION_MISMATCH: b"Argument version mismatch",
}

KIND_GPU, KIND_GI, KIND_CI, KIND_MIG = 1, 2, 3, 4
NO_INSTANCE = 0xFFFFFFFF
FIELD_RESETLESS_MIG = 184
FIELD_MIG_MODE_INDEPENDENT_QUERY = 199
FIELD_RECOVERY_ACTION = 230
VALUE_TYPE_UNSIGNED_INT = 1
COMPUTE_MODES = (0, 2, 3)
COMPUTE_MODE_EXCLUSIVE_THREAD = 1


class NvmlFailure(Exception):
    """Raised inside the simulator to return an nvmlReturn_t code from the current entry point."""

    def __init__(self, code):
        super(NvmlFailure, self).__init__(code)
        self.code = code


def _target(arg):
    """The object behind a `byref()` argument (or the argument itself)."""
    return getattr(arg, "_obj", arg)


def _value(arg):
    arg = _target(arg)
    return arg.value if hasattr(arg, "value") else int(arg)


def _bytes(arg):
    arg = _target(arg)
    raw = arg.value if hasattr(arg, "value") else arg
    if raw is None:
        raise NvmlFailure(ERROR_INVALID_ARGUMENT)
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _write_pointer(address, value):
    cell = ctypes.c_void_p(value)
    ctypes.memmove(address, ctypes.addressof(cell), ctypes.sizeof(ctypes.c_void_p))


def _set_handle(out, value):
    _write_pointer(ctypes.addressof(_target(out)), value)


def _set_struct_handle(struct, field, value):
    _write_pointer(ctypes.addressof(struct) + getattr(type(struct), field).offset, value)


def _set_string(buffer, length, text):
    data = text.encode()
    if len(data) + 1 > min(_value(length), len(buffer)):
        raise NvmlFailure(ERROR_INSUFFICIENT_SIZE)
    buffer.value = data


def _fill(struct, values):
    names = [field[0] for field in type(struct)._fields_]
    for name in names:
        if name in values:
            value = values[name]
            setattr(struct, name, value.encode() if isinstance(value, str) else value)


def encode_handle(kind, gpu_index, gi_id=0, ci_id=0):
    return (kind << 48) | ((gpu_index + 1) << 32) | (gi_id << 16) | ci_id


def decode_handle(handle):
    if handle is None:
        raise NvmlFailure(ERROR_INVALID_ARGUMENT)
    value = ctypes.cast(_target(handle), ctypes.c_void_p).value
    if not value:
        raise NvmlFailure(ERROR_INVALID_ARGUMENT)
    return value >> 48, ((value >> 32) & 0xFFFF) - 1, (value >> 16) & 0xFFFF, value & 0xFFFF


def normalize_bus_id(text):
    """NVML accepts domain:bus:device.function, domain:bus:device and bus:device.function (hex)."""
    text = text.strip().lower()
    full = re.match(r"^([0-9a-f]{1,8}):([0-9a-f]{1,2}):([0-9a-f]{1,2})(?:\.([0-7]))?$", text)
    short = re.match(r"^([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$", text)
    if full:
        domain, bus, device, function = full.group(1), full.group(2), full.group(3), full.group(4) or "0"
    elif short:
        domain, bus, device, function = "0", short.group(1), short.group(2), short.group(3)
    else:
        return None
    return "%08X:%02X:%02X.%X" % (int(domain, 16), int(bus, 16), int(device, 16), int(function, 16))


def gi_id_for(placement_start, placement_size, memory_slices):
    """GPU-instance ids follow the memory-slice binary tree (whole GPU 0, halves 1-2, quarters 3-6, ...)."""
    return memory_slices // placement_size - 1 + placement_start // placement_size


def _overlaps(start, size, others):
    return any(start < o_start + o_size and o_start < start + size for o_start, o_size in others)


def free_placements(candidates, occupied):
    """How many of `candidates` can still be created, greedily, next to `occupied` (start, size) pairs."""
    taken = list(occupied)
    count = 0
    for start, size in candidates:
        if not _overlaps(start, size, taken):
            taken.append((start, size))
            count += 1
    return count


def choose_placement(profile, instances, placement):
    """(start, size) for a new instance of `profile` next to `instances`, or raise the NVML error code.

    NVML's rules for GPU and compute instances alike: at most instanceCount of a profile, an explicit placement
    must be one the profile offers (InvalidArgument) and free (InsufficientResources), no placement = first free.
    """
    occupied = [(instance["start"], instance["size"]) for instance in instances]
    if len([i for i in instances if i["profile_id"] == profile["id"]]) >= profile["instanceCount"]:
        raise NvmlFailure(ERROR_INSUFFICIENT_RESOURCES)
    if placement is None:
        fitting = [p for p in profile["placements"] if not _overlaps(p[0], p[1], occupied)]
        if not fitting:
            raise NvmlFailure(ERROR_INSUFFICIENT_RESOURCES)
        return tuple(fitting[0])
    requested = _target(placement)
    start, size = requested.start, requested.size
    if [start, size] not in profile["placements"]:
        raise NvmlFailure(ERROR_INVALID_ARGUMENT)
    if _overlaps(start, size, occupied):
        raise NvmlFailure(ERROR_INSUFFICIENT_RESOURCES)
    return start, size


def fill_placements(profile, placements, count):
    """The PossiblePlacements contract: NULL array -> count only; else fill the caller's array."""
    counter = _target(count)
    wanted = profile["placements"]
    if placements is None:
        counter.value = len(wanted)
        return SUCCESS
    entries = _target(placements)
    if len(entries) < len(wanted):
        counter.value = len(wanted)
        return ERROR_INSUFFICIENT_SIZE
    for position, (start, size) in enumerate(wanted):
        entries[position].start = start
        entries[position].size = size
    counter.value = len(wanted)
    return SUCCESS


def fill_handles(handles, instances, count):
    """The GetGpuInstances / GetComputeInstances contract: fill the caller's handle array with `handles`."""
    counter = _target(count)
    if instances is None:
        counter.value = len(handles)
        return SUCCESS if not handles else ERROR_INSUFFICIENT_SIZE
    entries = _target(instances)
    if len(entries) < len(handles):
        counter.value = len(handles)
        return ERROR_INSUFFICIENT_SIZE
    for position, value in enumerate(handles):
        _write_pointer(ctypes.addressof(entries) + position * ctypes.sizeof(ctypes.c_void_p), value)
    counter.value = len(handles)
    return SUCCESS


def _absent_symbol(name):
    def missing(_self):
        raise AttributeError("libnvidia-ml.so.1 (simulated) has no symbol %s" % name)
    return property(missing)


def _fill_fabric(info, fabric):
    """An nvmlGpuFabricInfo_t / _v2_t / _v3_t from a GPU's simulated fabric state."""
    raw = bytearray(uuidlib.UUID(fabric["cluster_uuid"]).bytes)
    ctypes.memmove(ctypes.addressof(info) + type(info).clusterUuid.offset, bytes(raw), len(raw))
    _fill(info, {"status": fabric["status"], "cliqueId": fabric["clique_id"], "state": fabric["state"],
                 "healthMask": 0, "healthSummary": 0})


class SimulatedLibrary(object):
    """The simulated libnvidia-ml: bound to a state file; attribute names are NVML symbol names."""

    _MUTATING = frozenset([
        "nvmlDeviceSetPersistenceMode", "nvmlDeviceSetComputeMode", "nvmlDeviceSetMigMode",
        "nvmlDeviceCreateGpuInstance", "nvmlDeviceCreateGpuInstanceWithPlacement", "nvmlGpuInstanceDestroy",
        "nvmlGpuInstanceCreateComputeInstance", "nvmlGpuInstanceCreateComputeInstanceWithPlacement",
        "nvmlComputeInstanceDestroy",
    ])

    def __init__(self, state_path):
        self.store = StateStore(state_path)
        self._init_count = 0
        self.calls = []
        absent = self._absent_functions()
        if absent:
            # A symbol the driver lacks: pynvml's getattr() fails and it raises FUNCTION_NOT_FOUND.
            self.__class__ = type(type(self).__name__, (type(self),),
                                  dict((name, _absent_symbol(name)) for name in absent))
        for name in dir(self):
            if name.startswith("nvml") and name not in absent:
                setattr(self, name, self._entry_point(name, getattr(self, name)))

    def _absent_functions(self):
        try:
            return frozenset(self.store.read().get("absent_functions", ()))
        except SimulatorError:
            return frozenset()

    # -- plumbing -----------------------------------------------------------------------------------------

    def _entry_point(self, name, implementation):
        library = self

        def entry(*args):
            library.calls.append(name)
            try:
                injected = library._injected_fault(name)
                if injected:
                    return injected
                if name not in ("nvmlInitWithFlags", "nvmlInit_v2", "nvmlErrorString") and library._init_count <= 0:
                    return ERROR_UNINITIALIZED
                if name in library._MUTATING:
                    with library.store.transaction() as state:
                        return implementation(state, *args)
                return implementation(library.store.read(), *args)
            except NvmlFailure as failure:
                return failure.code

        entry.__name__ = name
        return entry

    def _injected_fault(self, name):
        state = self.store.read()
        if not any(fault["function"] == name for fault in state.get("faults", ())):
            return 0
        with self.store.transaction() as state:
            for fault in state["faults"]:
                if fault["function"] == name:
                    fault["seen"] += 1
                    if fault["seen"] == fault["call"]:
                        return fault["code"]
        return 0

    @staticmethod
    def _require_root(state):
        if state.get("require_root", True) and os.geteuid() != 0:
            raise NvmlFailure(ERROR_NO_PERMISSION)

    @staticmethod
    def _gpu(state, index):
        if index < 0 or index >= len(state["gpus"]):
            raise NvmlFailure(ERROR_INVALID_ARGUMENT)
        gpu = state["gpus"][index]
        if gpu.get("lost"):
            raise NvmlFailure(ERROR_GPU_IS_LOST)
        return gpu

    def _device(self, state, handle, allow_mig=False):
        """(index, gpu, spec, mig) for a device handle; mig is (gi, ci) for a MIG device handle."""
        kind, index, gi_id, ci_id = decode_handle(handle)
        if kind == KIND_MIG and allow_mig:
            gpu = self._gpu(state, index)
            gi = self._find_gi(gpu, gi_id)
            return index, gpu, models.model(gpu["model"]), (gi, self._find_ci(gi, ci_id))
        if kind != KIND_GPU:
            raise NvmlFailure(ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(state, index)
        return index, gpu, models.model(gpu["model"]), None

    @staticmethod
    def _find_gi(gpu, gi_id):
        for gi in gpu["gpu_instances"]:
            if gi["id"] == gi_id:
                return gi
        raise NvmlFailure(ERROR_INVALID_ARGUMENT)

    @staticmethod
    def _find_ci(gi, ci_id):
        for ci in gi["compute_instances"]:
            if ci["id"] == ci_id:
                return ci
        raise NvmlFailure(ERROR_INVALID_ARGUMENT)

    def _gpu_instance(self, state, handle):
        kind, index, gi_id, _unused = decode_handle(handle)
        if kind != KIND_GI:
            raise NvmlFailure(ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(state, index)
        spec = models.model(gpu["model"])
        gi = self._find_gi(gpu, gi_id)
        return index, gpu, spec, gi

    def _compute_instance(self, state, handle):
        kind, index, gi_id, ci_id = decode_handle(handle)
        if kind != KIND_CI:
            raise NvmlFailure(ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(state, index)
        gi = self._find_gi(gpu, gi_id)
        return index, gpu, gi, self._find_ci(gi, ci_id)

    @staticmethod
    def _mig_devices(gpu):
        devices = []
        for gi in sorted(gpu["gpu_instances"], key=lambda g: (g["start"], g["id"])):
            for ci in sorted(gi["compute_instances"], key=lambda c: (c["start"], c["id"])):
                devices.append((gi, ci))
        return devices

    # -- init, system ---------------------------------------------------------------------------------

    def nvmlInitWithFlags(self, state, flags):
        if not state.get("library_present", True):
            return ERROR_LIBRARY_NOT_FOUND
        if not state.get("driver_loaded", True):
            return ERROR_DRIVER_NOT_LOADED
        self._init_count += 1
        return SUCCESS

    def nvmlInit_v2(self, state):
        return self.nvmlInitWithFlags(state, 0)

    def nvmlShutdown(self, state):
        self._init_count -= 1
        return SUCCESS

    def nvmlErrorString(self, state, code):
        return ERROR_STRINGS.get(_value(code), b"Unknown Error")

    def nvmlSystemGetDriverVersion(self, state, buffer, length):
        _set_string(buffer, length, state["driver_version"])
        return SUCCESS

    def nvmlSystemGetNVMLVersion(self, state, buffer, length):
        _set_string(buffer, length, state["nvml_version"])
        return SUCCESS

    def nvmlSystemGetCudaDriverVersion(self, state, out):
        _target(out).value = state["cuda_driver_version"]
        return SUCCESS

    nvmlSystemGetCudaDriverVersion_v2 = nvmlSystemGetCudaDriverVersion

    def nvmlSystemGetProcessName(self, state, pid, buffer, length):
        for gpu in state["gpus"]:
            for process in gpu["processes"]:
                if process["pid"] == _value(pid):
                    _set_string(buffer, length, process["name"])
                    return SUCCESS
        return ERROR_NOT_FOUND

    # -- device lookup ----------------------------------------------------------------------------------

    def nvmlDeviceGetCount_v2(self, state, out):
        _target(out).value = len(state["gpus"])
        return SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, state, index, out):
        index = _value(index)
        self._gpu(state, index)
        _set_handle(out, encode_handle(KIND_GPU, index))
        return SUCCESS

    def nvmlDeviceGetHandleByUUID(self, state, uuid, out):
        wanted = _bytes(uuid)
        for index, gpu in enumerate(state["gpus"]):
            if gpu["uuid"] == wanted:
                self._gpu(state, index)
                _set_handle(out, encode_handle(KIND_GPU, index))
                return SUCCESS
            for gi in gpu["gpu_instances"]:
                for ci in gi["compute_instances"]:
                    if ci["uuid"] == wanted:
                        _set_handle(out, encode_handle(KIND_MIG, index, gi["id"], ci["id"]))
                        return SUCCESS
        return ERROR_NOT_FOUND

    def nvmlDeviceGetHandleByPciBusId_v2(self, state, bus_id, out):
        wanted = normalize_bus_id(_bytes(bus_id))
        for index, gpu in enumerate(state["gpus"]):
            if wanted is not None and gpu["bus_id"].upper() == wanted:
                self._gpu(state, index)
                _set_handle(out, encode_handle(KIND_GPU, index))
                return SUCCESS
        return ERROR_NOT_FOUND

    # -- device attributes ------------------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, state, handle, out):
        index = self._device(state, handle)[0]
        _target(out).value = index
        return SUCCESS

    def nvmlDeviceGetName(self, state, handle, buffer, length):
        _unused, gpu, spec, mig = self._device(state, handle, allow_mig=True)
        name = spec["name"]
        if mig:
            name = "%s %s" % (name, self._mig_profile_name(spec, *mig))
        _set_string(buffer, length, name)
        return SUCCESS

    @staticmethod
    def _mig_profile_name(spec, gi, ci):
        gi_profile = models.gi_profile_by_id(spec, gi["profile_id"])
        return models.ci_profile(gi_profile, ci["profile_id"])["name"]

    def nvmlDeviceGetUUID(self, state, handle, buffer, length):
        _unused, gpu, _unused, mig = self._device(state, handle, allow_mig=True)
        _set_string(buffer, length, mig[1]["uuid"] if mig else gpu["uuid"])
        return SUCCESS

    def nvmlDeviceGetSerial(self, state, handle, buffer, length):
        _set_string(buffer, length, self._device(state, handle)[1]["serial"])
        return SUCCESS

    def nvmlDeviceGetBoardPartNumber(self, state, handle, buffer, length):
        _set_string(buffer, length, self._device(state, handle)[2]["board_part_number"])
        return SUCCESS

    def nvmlDeviceGetMinorNumber(self, state, handle, out):
        _target(out).value = self._device(state, handle)[1]["minor_number"]
        return SUCCESS

    def nvmlDeviceGetPciInfo_v3(self, state, handle, out):
        _unused, gpu, spec, _unused = self._device(state, handle, allow_mig=True)
        domain, bus, rest = gpu["bus_id"].split(":")
        device = rest.split(".")[0]
        _fill(_target(out), {
            "busIdLegacy": gpu["bus_id"][4:], "busId": gpu["bus_id"], "domain": int(domain, 16),
            "bus": int(bus, 16), "device": int(device, 16), "pciDeviceId": spec["pci_device_id"],
            "pciSubSystemId": spec["pci_subsystem_id"],
        })
        return SUCCESS

    def nvmlDeviceGetMemoryInfo(self, state, handle, out):
        _unused, gpu, spec, mig = self._device(state, handle, allow_mig=True)
        if mig:
            gi, ci = mig
            total = models.gi_profile_by_id(spec, gi["profile_id"])["memorySizeMB"] * 1024 * 1024
            used = sum(p["used_memory"] for p in gpu["processes"]
                       if p["gpu_instance_id"] == gi["id"])
        else:
            total = spec["memory_total"]
            used = gpu["memory_reserved"] + sum(p["used_memory"] for p in gpu["processes"])
        _fill(_target(out), {"total": total, "used": used, "free": total - used})
        return SUCCESS

    def nvmlDeviceGetCudaComputeCapability(self, state, handle, major, minor):
        spec = self._device(state, handle, allow_mig=True)[2]
        _target(major).value, _target(minor).value = spec["cuda_cc"]
        return SUCCESS

    def nvmlDeviceGetArchitecture(self, state, handle, out):
        _target(out).value = self._device(state, handle)[2]["architecture"]
        return SUCCESS

    def nvmlDeviceGetPowerManagementLimit(self, state, handle, out):
        _target(out).value = self._device(state, handle)[2]["power_limit_mw"]
        return SUCCESS

    def nvmlDeviceGetEccMode(self, state, handle, current, pending):
        gpu = self._device(state, handle)[1]
        _target(current).value, _target(pending).value = gpu["ecc_mode"]
        return SUCCESS

    def nvmlDeviceGetAccountingMode(self, state, handle, out):
        _target(out).value = self._device(state, handle)[1]["accounting_mode"]
        return SUCCESS

    def nvmlDeviceGetFieldValues(self, state, handle, count, values):
        spec = self._device(state, handle)[2]
        array = _target(values)
        known = {
            FIELD_RESETLESS_MIG: int(spec["mig_mode_change"] == "immediate"),
            FIELD_MIG_MODE_INDEPENDENT_QUERY: int(models.mig_capable(spec)),
            FIELD_RECOVERY_ACTION: 0,
        }
        for position in range(_value(count)):
            entry = array[position]
            if entry.fieldId in known:
                entry.nvmlReturn = SUCCESS
                entry.valueType = VALUE_TYPE_UNSIGNED_INT
                entry.value.ullVal = known[entry.fieldId]
            else:
                entry.nvmlReturn = ERROR_NOT_SUPPORTED
        return SUCCESS

    # -- processes --------------------------------------------------------------------------------------

    def _processes(self, state, handle, count, array):
        _unused, gpu, _unused, mig = self._device(state, handle, allow_mig=True)
        processes = gpu["processes"]
        if mig:
            processes = [p for p in processes
                         if p["gpu_instance_id"] == mig[0]["id"] and p["compute_instance_id"] == mig[1]["id"]]
        counter = _target(count)
        if array is None or counter.value < len(processes):
            needed = len(processes)
            counter.value = needed
            return ERROR_INSUFFICIENT_SIZE if needed else SUCCESS
        entries = _target(array)
        for position, process in enumerate(processes):
            gi_id = process["gpu_instance_id"]
            ci_id = process["compute_instance_id"]
            _fill(entries[position], {
                "pid": process["pid"], "usedGpuMemory": process["used_memory"],
                "gpuInstanceId": NO_INSTANCE if gi_id is None else gi_id,
                "computeInstanceId": NO_INSTANCE if ci_id is None else ci_id,
            })
        counter.value = len(processes)
        return SUCCESS

    def nvmlDeviceGetComputeRunningProcesses_v3(self, state, handle, count, array):
        return self._processes(state, handle, count, array)

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, state, handle, count, array):
        self._device(state, handle, allow_mig=True)
        _target(count).value = 0
        return SUCCESS

    # -- persistence and compute mode -------------------------------------------------------------------

    def nvmlDeviceGetPersistenceMode(self, state, handle, out):
        _target(out).value = self._device(state, handle)[1]["persistence_mode"]
        return SUCCESS

    def nvmlDeviceSetPersistenceMode(self, state, handle, mode):
        gpu = self._device(state, handle)[1]
        mode = _value(mode)
        if mode not in (0, 1):
            return ERROR_INVALID_ARGUMENT
        self._require_root(state)
        gpu["persistence_mode"] = mode
        return SUCCESS

    def nvmlDeviceGetComputeMode(self, state, handle, out):
        _target(out).value = self._device(state, handle, allow_mig=True)[1]["compute_mode"]
        return SUCCESS

    def nvmlDeviceSetComputeMode(self, state, handle, mode):
        _unused, gpu, _unused, mig = self._device(state, handle, allow_mig=True)
        mode = _value(mode)
        if mode == COMPUTE_MODE_EXCLUSIVE_THREAD:
            return ERROR_NOT_SUPPORTED
        if mode not in COMPUTE_MODES:
            return ERROR_INVALID_ARGUMENT
        self._require_root(state)
        if mig or gpu["mig_current"]:
            return ERROR_NOT_SUPPORTED
        gpu["compute_mode"] = mode
        return SUCCESS

    # -- MIG mode -------------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, state, handle, current, pending):
        _unused, gpu, spec, _unused = self._device(state, handle)
        if not models.mig_capable(spec):
            return ERROR_NOT_SUPPORTED
        _target(current).value = gpu["mig_current"]
        _target(pending).value = gpu["mig_pending"]
        return SUCCESS

    def nvmlDeviceSetMigMode(self, state, handle, mode, activation_status):
        _unused, gpu, spec, _unused = self._device(state, handle)
        mode = _value(mode)
        if not models.mig_capable(spec):
            return ERROR_NOT_SUPPORTED
        if mode not in (0, 1):
            return ERROR_INVALID_ARGUMENT
        self._require_root(state)
        if mode == 0 and gpu["gpu_instances"]:
            return ERROR_IN_USE
        status = _target(activation_status)
        if spec["mig_mode_change"] == "immediate":
            if gpu["processes"] and gpu["mig_current"] != mode:
                return ERROR_IN_USE
            gpu["mig_current"] = gpu["mig_pending"] = mode
            status.value = SUCCESS
            return SUCCESS
        gpu["mig_pending"] = mode
        if gpu["mig_current"] == mode:
            status.value = SUCCESS
        else:
            status.value = ERROR_IN_USE if gpu["processes"] else ERROR_RESET_REQUIRED
        return SUCCESS

    def nvmlDeviceGetMaxMigDeviceCount(self, state, handle, out):
        _unused, gpu, spec, _unused = self._device(state, handle)
        _target(out).value = spec["max_mig_devices"] if gpu["mig_current"] else 0
        return SUCCESS

    def nvmlDeviceIsMigDeviceHandle(self, state, handle, out):
        kind = decode_handle(handle)[0]
        self._device(state, handle, allow_mig=True)
        _target(out).value = int(kind == KIND_MIG)
        return SUCCESS

    def nvmlDeviceGetMigDeviceHandleByIndex(self, state, handle, index, out):
        gpu_index, gpu, spec, _unused = self._device(state, handle)
        index = _value(index)
        if not gpu["mig_current"]:
            return ERROR_NOT_FOUND
        if index >= spec["max_mig_devices"]:
            return ERROR_INVALID_ARGUMENT
        devices = self._mig_devices(gpu)
        if index >= len(devices):
            return ERROR_NOT_FOUND
        gi, ci = devices[index]
        _set_handle(out, encode_handle(KIND_MIG, gpu_index, gi["id"], ci["id"]))
        return SUCCESS

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, state, handle, out):
        kind, index, _unused, _unused = decode_handle(handle)
        if kind != KIND_MIG:
            return ERROR_INVALID_ARGUMENT
        self._device(state, handle, allow_mig=True)
        _set_handle(out, encode_handle(KIND_GPU, index))
        return SUCCESS

    def nvmlDeviceGetGpuInstanceId(self, state, handle, out):
        mig = self._device(state, handle, allow_mig=True)[3]
        if not mig:
            return ERROR_INVALID_ARGUMENT
        _target(out).value = mig[0]["id"]
        return SUCCESS

    def nvmlDeviceGetComputeInstanceId(self, state, handle, out):
        mig = self._device(state, handle, allow_mig=True)[3]
        if not mig:
            return ERROR_INVALID_ARGUMENT
        _target(out).value = mig[1]["id"]
        return SUCCESS

    # -- GPU instances ----------------------------------------------------------------------------------

    def _gi_profile_info(self, state, handle, index, out):
        spec = self._device(state, handle)[2]
        index = _value(index)
        if index >= models.GI_PROFILE_COUNT or index in models.GI_INVALID_INDICES:
            return ERROR_INVALID_ARGUMENT
        if not models.mig_capable(spec):
            return ERROR_NOT_SUPPORTED
        profile = models.gi_profile_by_index(spec, index)
        if profile is None:
            return ERROR_NOT_SUPPORTED
        _fill(_target(out), profile)
        return SUCCESS

    nvmlDeviceGetGpuInstanceProfileInfo = _gi_profile_info
    nvmlDeviceGetGpuInstanceProfileInfoV = _gi_profile_info

    def _profile(self, spec, profile_id):
        profile = models.gi_profile_by_id(spec, _value(profile_id))
        if profile is None:
            raise NvmlFailure(ERROR_INVALID_ARGUMENT if models.mig_capable(spec) else ERROR_NOT_SUPPORTED)
        return profile

    def nvmlDeviceGetGpuInstanceProfileInfoByIdV(self, state, handle, profile_id, out):
        profile = self._profile(self._device(state, handle)[2], profile_id)
        _fill(_target(out), profile)
        return SUCCESS

    def nvmlDeviceGetGpuInstancePossiblePlacements_v2(self, state, handle, profile_id, placements, count):
        return fill_placements(self._profile(self._device(state, handle)[2], profile_id), placements, count)

    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, state, handle, profile_id, out):
        _unused, gpu, spec, _unused = self._device(state, handle)
        profile = self._profile(spec, profile_id)
        instances = gpu["gpu_instances"] if gpu["mig_current"] else []
        existing = len([gi for gi in instances if gi["profile_id"] == profile["id"]])
        room = free_placements(profile["placements"], [(gi["start"], gi["size"]) for gi in instances])
        _target(out).value = max(0, min(room, profile["instanceCount"] - existing))
        return SUCCESS

    def _create_gi(self, state, handle, profile_id, placement, out):
        index, gpu, spec, _unused = self._device(state, handle)
        profile = self._profile(spec, profile_id)
        self._require_root(state)
        if not gpu["mig_current"]:
            return ERROR_NOT_SUPPORTED
        start, size = choose_placement(profile, gpu["gpu_instances"], placement)
        gi_id = gi_id_for(start, size, spec["memory_slices"])
        gpu["gpu_instances"].append({
            "id": gi_id, "profile_id": profile["id"], "start": start, "size": size, "compute_instances": [],
        })
        _set_handle(out, encode_handle(KIND_GI, index, gi_id))
        return SUCCESS

    def nvmlDeviceCreateGpuInstance(self, state, handle, profile_id, out):
        return self._create_gi(state, handle, profile_id, None, out)

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, state, handle, profile_id, placement, out):
        return self._create_gi(state, handle, profile_id, placement, out)

    def nvmlDeviceGetGpuInstances(self, state, handle, profile_id, instances, count):
        index, gpu, spec, _unused = self._device(state, handle)
        profile = self._profile(spec, profile_id)
        matching = [gi for gi in gpu["gpu_instances"] if gi["profile_id"] == profile["id"]] if gpu["mig_current"] else []
        handles = [encode_handle(KIND_GI, index, gi["id"]) for gi in sorted(matching, key=lambda g: g["id"])]
        return fill_handles(handles, instances, count)

    def nvmlDeviceGetGpuInstanceById(self, state, handle, gi_id, out):
        index, gpu, _unused, _unused = self._device(state, handle)
        if not gpu["mig_current"]:
            return ERROR_NOT_SUPPORTED
        gi_id = _value(gi_id)
        if not [gi for gi in gpu["gpu_instances"] if gi["id"] == gi_id]:
            return ERROR_NOT_FOUND
        _set_handle(out, encode_handle(KIND_GI, index, gi_id))
        return SUCCESS

    def nvmlGpuInstanceGetInfo(self, state, handle, out):
        index, _unused, _unused, gi = self._gpu_instance(state, handle)
        info = _target(out)
        _set_struct_handle(info, "device", encode_handle(KIND_GPU, index))
        info.id = gi["id"]
        info.profileId = gi["profile_id"]
        info.placement.start = gi["start"]
        info.placement.size = gi["size"]
        return SUCCESS

    def nvmlGpuInstanceDestroy(self, state, handle):
        _unused, gpu, _unused, gi = self._gpu_instance(state, handle)
        self._require_root(state)
        if gi["compute_instances"] or [p for p in gpu["processes"] if p["gpu_instance_id"] == gi["id"]]:
            return ERROR_IN_USE
        gpu["gpu_instances"].remove(gi)
        return SUCCESS

    # -- compute instances ------------------------------------------------------------------------------

    def _ci_profile(self, spec, gi, ci_profile_id):
        ci_profile_id = _value(ci_profile_id)
        if ci_profile_id >= models.CI_PROFILE_COUNT:
            raise NvmlFailure(ERROR_INVALID_ARGUMENT)
        profile = models.ci_profile(models.gi_profile_by_id(spec, gi["profile_id"]), ci_profile_id)
        if profile is None:
            raise NvmlFailure(ERROR_NOT_SUPPORTED)
        return profile

    def _ci_profile_info(self, state, handle, ci_profile_id, engine_profile, out):
        kind = decode_handle(handle)[0]
        if kind != KIND_GI:
            return ERROR_INVALID_ARGUMENT
        _unused, _unused, spec, gi = self._gpu_instance(state, handle)
        if _value(engine_profile) != 0:
            return ERROR_INVALID_ARGUMENT
        _fill(_target(out), self._ci_profile(spec, gi, ci_profile_id))
        return SUCCESS

    nvmlGpuInstanceGetComputeInstanceProfileInfo = _ci_profile_info
    nvmlGpuInstanceGetComputeInstanceProfileInfoV = _ci_profile_info

    def nvmlGpuInstanceGetComputeInstanceRemainingCapacity(self, state, handle, ci_profile_id, out):
        _unused, _unused, spec, gi = self._gpu_instance(state, handle)
        profile = self._ci_profile(spec, gi, ci_profile_id)
        existing = len([ci for ci in gi["compute_instances"] if ci["profile_id"] == profile["id"]])
        room = free_placements(profile["placements"], [(ci["start"], ci["size"]) for ci in gi["compute_instances"]])
        _target(out).value = max(0, min(room, profile["instanceCount"] - existing))
        return SUCCESS

    def nvmlGpuInstanceGetComputeInstancePossiblePlacements(self, state, handle, ci_profile_id, placements, count):
        _unused, _unused, spec, gi = self._gpu_instance(state, handle)
        return fill_placements(self._ci_profile(spec, gi, ci_profile_id), placements, count)

    def _create_ci(self, state, handle, ci_profile_id, placement, out):
        index, gpu, spec, gi = self._gpu_instance(state, handle)
        profile = self._ci_profile(spec, gi, ci_profile_id)
        self._require_root(state)
        start, size = choose_placement(profile, gi["compute_instances"], placement)
        used_ids = set(ci["id"] for ci in gi["compute_instances"])
        ci_id = min(set(range(8)) - used_ids)
        gi["compute_instances"].append({
            "id": ci_id, "profile_id": profile["id"], "start": start, "size": size,
            "uuid": new_mig_uuid(gpu, gi["id"], ci_id),
        })
        _set_handle(out, encode_handle(KIND_CI, index, gi["id"], ci_id))
        return SUCCESS

    def nvmlGpuInstanceCreateComputeInstance(self, state, handle, ci_profile_id, out):
        return self._create_ci(state, handle, ci_profile_id, None, out)

    def nvmlGpuInstanceCreateComputeInstanceWithPlacement(self, state, handle, ci_profile_id, placement, out):
        return self._create_ci(state, handle, ci_profile_id, placement, out)

    def nvmlGpuInstanceGetComputeInstances(self, state, handle, ci_profile_id, instances, count):
        index, _unused, spec, gi = self._gpu_instance(state, handle)
        profile = self._ci_profile(spec, gi, ci_profile_id)
        matching = sorted([ci for ci in gi["compute_instances"] if ci["profile_id"] == profile["id"]],
                          key=lambda c: c["id"])
        handles = [encode_handle(KIND_CI, index, gi["id"], ci["id"]) for ci in matching]
        return fill_handles(handles, instances, count)

    def nvmlGpuInstanceGetComputeInstanceById(self, state, handle, ci_id, out):
        index, _unused, _unused, gi = self._gpu_instance(state, handle)
        ci_id = _value(ci_id)
        if not [ci for ci in gi["compute_instances"] if ci["id"] == ci_id]:
            return ERROR_NOT_FOUND
        _set_handle(out, encode_handle(KIND_CI, index, gi["id"], ci_id))
        return SUCCESS

    def nvmlComputeInstanceGetInfo_v2(self, state, handle, out):
        index, _unused, gi, ci = self._compute_instance(state, handle)
        info = _target(out)
        _set_struct_handle(info, "device", encode_handle(KIND_GPU, index))
        _set_struct_handle(info, "gpuInstance", encode_handle(KIND_GI, index, gi["id"]))
        info.id = ci["id"]
        info.profileId = ci["profile_id"]
        info.placement.start = ci["start"]
        info.placement.size = ci["size"]
        return SUCCESS

    def nvmlComputeInstanceDestroy(self, state, handle):
        _unused, gpu, gi, ci = self._compute_instance(state, handle)
        self._require_root(state)
        if [p for p in gpu["processes"]
                if p["gpu_instance_id"] == gi["id"] and p["compute_instance_id"] == ci["id"]]:
            return ERROR_IN_USE
        gi["compute_instances"].remove(ci)
        return SUCCESS

    # -- NVLink and the NVLink fabric -----------------------------------------------------------------------

    def nvmlDeviceGetGpuFabricInfo(self, state, handle, out):
        fabric = gpu_nvlink(self._device(state, handle)[1])[0]
        if fabric is None:
            return ERROR_NOT_SUPPORTED
        _fill_fabric(_target(out), fabric)
        return SUCCESS

    def nvmlDeviceGetGpuFabricInfoV(self, state, handle, out):
        fabric = gpu_nvlink(self._device(state, handle)[1])[0]
        info = _target(out)
        if info.version not in FABRIC_INFO_VERSIONS:
            return ERROR_ARGUMENT_VERSION_MISMATCH
        if fabric is None:
            return ERROR_NOT_SUPPORTED
        _fill_fabric(info, fabric)
        return SUCCESS

    def nvmlDeviceGetNvLinkState(self, state, handle, link, out):
        nvlink = gpu_nvlink(self._device(state, handle)[1])[1]
        link = _value(link)
        if link >= DRIVER_NVLINK_MAX_LINKS:
            return ERROR_INVALID_ARGUMENT
        if link >= len(nvlink):
            return ERROR_NOT_SUPPORTED
        _target(out).value = nvlink[link]
        return SUCCESS


__all__ = ["SimulatedLibrary", "reset_gpus", "normalize_bus_id"]
