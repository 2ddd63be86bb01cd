# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one seam between the collection and NVML (pynvml). Plain Python: no Ansible imports.

Everything that talks to the GPU goes through `NvmlSession`: it pairs nvmlInit/nvmlShutdown, finds GPUs by
index, UUID or PCI bus id, applies the common device selector, and turns pynvml's exceptions into one
`NvmlError` whose message says what went wrong and what to do about it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import traceback

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import (
    GpuopsError,
    check_device_filter,
    parse_devices,
)

try:
    import pynvml
except ImportError:
    pynvml = None
    PYNVML_IMPORT_ERROR = traceback.format_exc()
else:
    PYNVML_IMPORT_ERROR = None

NVML_LIBRARY = "libnvidia-ml.so.1"

_KINDS = {
    1: "uninitialized",
    2: "invalid_argument",
    3: "not_supported",
    4: "no_permission",
    6: "not_found",
    7: "insufficient_size",
    9: "driver_not_loaded",
    12: "library_missing",
    13: "function_not_found",
    15: "gpu_lost",
    16: "reset_required",
    19: "in_use",
    23: "insufficient_resources",
}

COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}
# NVML_FI_DEV_MIG_MODE_CHANGE_WITHOUT_RESET (Hopper and later switch the MIG mode without a GPU reset).
FIELD_RESETLESS_MIG = 184
ARCH_HOPPER = 9
NO_INSTANCE = 0xFFFFFFFF
_BUS_ID_FULL = re.compile(r"^([0-9a-fA-F]{1,8}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.([0-7]))?$")
_BUS_ID_SHORT = re.compile(r"^([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")
# A MIG device by where it sits, which survives the instances being recreated (a reboot, gpuops-mig-apply) where
# its MIG- UUID does not: `mig:<GPU index, GPU- UUID or bus id>:<first memory slice of its GPU instance>:<first
# compute slice of its compute instance in that GPU instance>`.
MIG_PLACEMENT_PATTERN = re.compile(r"^mig:(?P<gpu>.+):(?P<gi>[0-9]+):(?P<ci>[0-9]+)$", re.IGNORECASE)


def mig_placement_selector(gpu_key, gi_start, ci_start):
    """The stable selector of the MIG device at (GPU instance start, compute instance start) of a GPU."""
    return "mig:%s:%d:%d" % (gpu_key, gi_start, ci_start)


class NvmlError(GpuopsError):
    """Any failure talking to NVML or selecting GPUs, with an actionable message.

    `kind` is a stable keyword (pynvml_missing, pynvml_too_old, library_missing, driver_not_loaded, no_permission,
    not_supported, not_found, gpu_lost, in_use, insufficient_resources, invalid_selection, ...); `nvml_code` the
    nvmlReturn_t.
    """

    def __init__(self, message, kind="nvml", nvml_code=None, details=None):
        super(NvmlError, self).__init__(message, kind=kind, nvml_code=nvml_code, details=details)


# The oldest nvidia-ml-py this collection works with (requirements.txt): older bindings lack NVML functions and
# structure versions the engines call (e.g. Debian 12's python3-pynvml 11.525).
NVML_PY_MINIMUM = "12.535.77"
PYNVML_TOO_OLD = ("nvidia-ml-py %s (import name pynvml) is older than %s, the oldest this collection works with, for "
                  "the Python that runs this on the managed node: upgrade it (pip install 'nvidia-ml-py>=%s'), or let "
                  "the gpuops.nvidia.driver role provide it (driver_nvml_binding) and use the Python it names")


def nvml_py_version():
    """The installed nvidia-ml-py's version from its package metadata, or None when there is none to read."""
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8: no metadata to compare
        return None
    for name in ("nvidia-ml-py", "nvidia_ml_py"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _version_tuple(version):
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


PYNVML_MISSING = ("the Python package nvidia-ml-py (import name pynvml) is not installed for the Python that runs "
                  "this on the managed node: install it with pip (it is in this collection's requirements.txt)")


def text(value):
    """pynvml returns str or bytes depending on its version."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def normalize_bus_id(value):
    """A PCI bus id in NVML's canonical form (`00000000:18:00.0`), or None if it is not one."""
    value = str(value).strip()
    full = _BUS_ID_FULL.match(value)
    short = _BUS_ID_SHORT.match(value)
    if full:
        domain, bus, device, function = full.group(1), full.group(2), full.group(3), full.group(4) or "0"
    elif short:
        domain, bus, device, function = "0", short.group(1), short.group(2), short.group(3)
    else:
        return None
    return "%08X:%02X:%02X.%X" % (int(domain, 16), int(bus, 16), int(device, 16), int(function, 16))


def format_pci_device_id(value):
    """NVML's pciDeviceId (device << 16 | vendor) in mig-parted's form, e.g. `0x233010DE`."""
    return "0x%08X" % value


class Gpu:
    """A physical GPU as the collection addresses it."""

    def __init__(self, index, uuid, bus_id, pci_device_id, pci_subsystem_id, name, handle):
        self.index = index
        self.uuid = uuid
        self.bus_id = bus_id
        self.pci_device_id = pci_device_id
        self.pci_subsystem_id = pci_subsystem_id
        self.name = name
        self.handle = handle

    def describe(self):
        return "GPU %d (%s, %s)" % (self.index, self.name, self.bus_id)

    def matches_filter(self, device_filter):
        """mig-parted's device-filter: `0xDDDDVVVV` or `0xDDDDVVVV:0xSSSSVVVV`, case-insensitive."""
        for item in device_filter:
            device_id, _unused, subsystem_id = item.upper().replace("0X", "0x").partition(":")
            if device_id == self.pci_device_id.upper().replace("0X", "0x") and (
                    not subsystem_id or subsystem_id == self.pci_subsystem_id.upper().replace("0X", "0x")):
                return True
        return False

    def __repr__(self):
        return "Gpu(%d, %s)" % (self.index, self.uuid)


class NvmlSession:
    """nvmlInit on enter, nvmlShutdown on exit; `call()` is the only way the engine reaches pynvml."""

    def __init__(self, nvml_module=None):
        self.pynvml = nvml_module if nvml_module is not None else pynvml
        self._open = False
        self._gpus = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, exc_type, exc_value, tb):
        self.close()
        return False

    def open(self):
        if self.pynvml is None:
            raise NvmlError(PYNVML_MISSING, kind="pynvml_missing", details={"exception": PYNVML_IMPORT_ERROR})
        installed = nvml_py_version() if self.pynvml is pynvml else None
        if installed is not None and _version_tuple(installed) < _version_tuple(NVML_PY_MINIMUM):
            raise NvmlError(PYNVML_TOO_OLD % (installed, NVML_PY_MINIMUM, NVML_PY_MINIMUM), kind="pynvml_too_old",
                            details={"nvml_py_version": installed, "nvml_py_minimum": NVML_PY_MINIMUM})
        try:
            self.pynvml.nvmlInit()
        except self.pynvml.NVMLError as exc:
            raise self.error(exc, "initialise NVML")
        self._open = True

    def close(self):
        if self._open:
            self._open = False
            self._gpus = None
            try:
                self.pynvml.nvmlShutdown()
            except self.pynvml.NVMLError:
                pass

    # -- calls and errors ---------------------------------------------------------------------------

    def call(self, name, *args, **kwargs):
        """Run pynvml.`name`(*args); on failure raise NvmlError describing `what` was attempted on `gpu`."""
        what = kwargs.pop("what", None) or name
        gpu = kwargs.pop("gpu", None)
        try:
            return getattr(self.pynvml, name)(*args)
        except self.pynvml.NVMLError as exc:
            raise self.error(exc, what, gpu)

    def error(self, exc, what, gpu=None):
        code = getattr(exc, "value", None)
        kind = _KINDS.get(code, "nvml")
        where = " on %s" % gpu.describe() if gpu is not None else ""
        reason = str(exc)
        if kind == "library_missing":
            message = "%s not found: is the NVIDIA driver installed?" % NVML_LIBRARY
        elif kind == "driver_not_loaded":
            message = ("NVML could not reach the NVIDIA kernel driver (driver not loaded): load the nvidia kernel "
                       "module (modprobe nvidia) or reboot after installing the driver")
        elif kind == "no_permission":
            message = "cannot %s%s: insufficient permissions; this needs root: use become" % (what, where)
        elif kind == "not_supported":
            message = "%s does not support this: cannot %s" % (gpu.describe() if gpu else "this GPU", what)
        elif kind == "gpu_lost":
            message = ("cannot %s%s: the GPU is lost (fell off the bus); check `dmesg` for Xid errors, then reset "
                       "the GPU or reboot the node" % (what, where))
        elif kind == "function_not_found":
            message = ("cannot %s%s: the installed NVIDIA driver's NVML lacks this function; upgrade the driver"
                       % (what, where))
        else:
            message = "cannot %s%s: NVML error %s (%s)" % (what, where, code, reason)
        return NvmlError(message, kind=kind, nvml_code=code)

    # -- system -------------------------------------------------------------------------------------

    def driver_version(self):
        return text(self.call("nvmlSystemGetDriverVersion", what="read the driver version"))

    def nvml_version(self):
        return text(self.call("nvmlSystemGetNVMLVersion", what="read the NVML version"))

    def cuda_driver_version(self):
        value = self.call("nvmlSystemGetCudaDriverVersion_v2", what="read the CUDA driver version")
        return "%d.%d" % (value // 1000, (value % 1000) // 10)

    # -- devices ------------------------------------------------------------------------------------

    def gpus(self):
        """Every physical GPU NVML counts, in index order."""
        if self._gpus is None:
            gpus = []
            for index in range(self.call("nvmlDeviceGetCount", what="count GPUs")):
                handle = self.call("nvmlDeviceGetHandleByIndex", index, what="open GPU %d" % index)
                pci = self.call("nvmlDeviceGetPciInfo", handle, what="read the PCI info of GPU %d" % index)
                gpus.append(Gpu(
                    index=index,
                    uuid=text(self.call("nvmlDeviceGetUUID", handle, what="read the UUID of GPU %d" % index)),
                    bus_id=text(pci.busId),
                    pci_device_id=format_pci_device_id(pci.pciDeviceId),
                    pci_subsystem_id=format_pci_device_id(pci.pciSubSystemId),
                    name=text(self.call("nvmlDeviceGetName", handle, what="read the name of GPU %d" % index)),
                    handle=handle,
                ))
            self._gpus = gpus
        return self._gpus

    def inventory(self):
        """`GPU 0 (NVIDIA H100 80GB HBM3, 00000000:18:00.0, GPU-...)`, ... for error messages."""
        gpus = self.gpus()
        if not gpus:
            return "this host has no NVIDIA GPU"
        return "GPUs on this host: " + "; ".join("%d = %s %s %s" % (g.index, g.name, g.uuid, g.bus_id) for g in gpus)

    def find(self, key):
        """One GPU by index, GPU UUID or PCI bus id."""
        gpus = self.gpus()
        key_text = str(key).strip()
        if isinstance(key, int) or key_text.isdigit():
            index = int(key_text)
            if 0 <= index < len(gpus):
                return gpus[index]
            raise NvmlError("no GPU with index %d: %s" % (index, self.inventory()), kind="invalid_selection")
        if key_text.upper().startswith("MIG-") or MIG_PLACEMENT_PATTERN.match(key_text):
            raise NvmlError("%s is a MIG device, not a GPU: select its parent GPU (by index, GPU- UUID or PCI bus "
                            "id); %s" % (key_text, self.inventory()), kind="invalid_selection")
        if key_text.upper().startswith("GPU-"):
            for gpu in gpus:
                if gpu.uuid.lower() == key_text.lower():
                    return gpu
            raise NvmlError("no GPU with UUID %s: %s" % (key_text, self.inventory()), kind="invalid_selection")
        bus_id = normalize_bus_id(key_text)
        if bus_id is not None:
            for gpu in gpus:
                if gpu.bus_id.upper() == bus_id:
                    return gpu
            raise NvmlError("no GPU at PCI bus id %s: %s" % (key_text, self.inventory()), kind="invalid_selection")
        raise NvmlError("%r is not a GPU index, UUID (GPU-...) or PCI bus id (0000:18:00.0)" % (key,),
                        kind="invalid_selection")

    def select(self, devices="all", device_filter=None):
        """The common selector: `devices` is `all` or a list of index / UUID / bus id, then `device_filter`."""
        device_filter = check_device_filter(device_filter)
        devices = parse_devices(devices)
        if devices == "all":
            selected = list(self.gpus())
        else:
            selected = []
            chosen_by = {}
            for key in devices:
                gpu = self.find(key)
                if gpu.index in chosen_by:
                    raise NvmlError("GPU %d is selected twice (as %r and %r): list each GPU once"
                                    % (gpu.index, chosen_by[gpu.index], key), kind="invalid_selection")
                chosen_by[gpu.index] = key
                selected.append(gpu)
            selected.sort(key=lambda g: g.index)
        if device_filter:
            selected = [gpu for gpu in selected if gpu.matches_filter(device_filter)]
        return selected

    def mig_mode(self, gpu):
        """(current, pending) MIG mode as 0/1, or None for a GPU without MIG."""
        try:
            mode = self.call("nvmlDeviceGetMigMode", gpu.handle, what="read the MIG mode", gpu=gpu)
        except NvmlError as exc:
            if exc.kind == "not_supported":
                return None
            raise
        return int(mode[0]), int(mode[1])

    def resetless_mig(self, gpu):
        """True when a MIG mode change applies at once, without a GPU reset (Hopper and later).

        The one reader for facts and the MIG engine: NVML's field value where the driver answers it, else the
        architecture (Hopper or later), else False.
        """
        try:
            values = self.call("nvmlDeviceGetFieldValues", gpu.handle, [FIELD_RESETLESS_MIG],
                               what="read the resetless-MIG field", gpu=gpu)
            if values[0].nvmlReturn == 0:
                return bool(values[0].value.uiVal)
        except NvmlError:
            pass
        try:
            return self.call("nvmlDeviceGetArchitecture", gpu.handle, what="read the architecture",
                             gpu=gpu) >= ARCH_HOPPER
        except NvmlError:
            return False

    def compute_mode(self, gpu):
        """The compute mode as NVML's number (see COMPUTE_MODES): the one reader for facts and the MPS engine."""
        return self.call("nvmlDeviceGetComputeMode", gpu.handle, what="read the compute mode", gpu=gpu)

    def resolve_devices(self, devices, device_filter=None, allow_mig=False):
        """The selector resolved to CUDA devices, in the order given: [{uuid, type (gpu|mig), index, parent_uuid,
        parent_index}].

        Like select(), plus MIG device UUIDs where `allow_mig` (an MPS daemon serves MIG devices); a GPU in MIG
        mode is then refused, because CUDA sees its MIG devices, not the GPU.
        """
        keys = parse_devices(devices)
        device_filter = check_device_filter(device_filter)
        entries, chosen_by = [], {}
        for key in (self.select("all", device_filter) if keys == "all" else keys):
            key_text = str(key if keys != "all" else key.uuid).strip()
            placement = MIG_PLACEMENT_PATTERN.match(key_text) if allow_mig else None
            if placement:
                parent = self.find(placement.group("gpu"))
                entry = {"uuid": self.mig_device_at(parent, int(placement.group("gi")), int(placement.group("ci"))),
                         "type": "mig", "index": None, "parent_uuid": parent.uuid, "parent_index": parent.index}
            elif allow_mig and key_text.upper().startswith("MIG-"):
                parent, handle = self.mig_device_uuid_parent(key_text)
                entry = {"uuid": text(self.call("nvmlDeviceGetUUID", handle, what="read the UUID of %s" % key_text)),
                         "type": "mig", "index": None, "parent_uuid": parent.uuid, "parent_index": parent.index}
            else:
                parent = key if keys == "all" else self.find(key)
                mode = self.mig_mode(parent) if allow_mig else None
                if mode and mode[0]:
                    raise NvmlError("%s is in MIG mode: CUDA sees its MIG devices, not the GPU; list its MIG "
                                    "devices (MIG-... UUIDs) instead" % parent.describe(), kind="invalid_selection")
                entry = {"uuid": parent.uuid, "type": "gpu", "index": parent.index, "parent_uuid": None,
                         "parent_index": None}
            if device_filter and not parent.matches_filter(device_filter):
                continue
            if entry["uuid"] in chosen_by:
                raise NvmlError("device %s is selected twice (as %r and %r): list each device once"
                                % (entry["uuid"], chosen_by[entry["uuid"]], key), kind="invalid_selection")
            chosen_by[entry["uuid"]] = key
            entries.append(entry)
        return entries

    def mig_device_handles(self, gpu):
        """The handles of the MIG devices that exist now on a GPU in MIG mode."""
        handles = []
        for position in range(self.call("nvmlDeviceGetMaxMigDeviceCount", gpu.handle, what="count MIG devices",
                                        gpu=gpu)):
            try:
                handles.append(self.call("nvmlDeviceGetMigDeviceHandleByIndex", gpu.handle, position,
                                         what="open MIG device %d" % position, gpu=gpu))
            except NvmlError as exc:
                if exc.kind != "not_found":
                    raise
        return handles

    def mig_devices(self, gpu):
        """[{uuid, gpu_instance_id, compute_instance_id, gi_start, gi_size, ci_start, ci_size}] of a GPU in MIG
        mode, ordered by placement: the MIG devices that exist now."""
        devices = []
        for handle in self.mig_device_handles(gpu):
            gi_id = self.call("nvmlDeviceGetGpuInstanceId", handle, what="read a GPU-instance id", gpu=gpu)
            ci_id = self.call("nvmlDeviceGetComputeInstanceId", handle, what="read a compute-instance id", gpu=gpu)
            gi = self.call("nvmlDeviceGetGpuInstanceById", gpu.handle, gi_id, what="open GPU instance %d" % gi_id,
                           gpu=gpu)
            gi_info = self.call("nvmlGpuInstanceGetInfo", gi, what="read GPU instance %d" % gi_id, gpu=gpu)
            ci = self.call("nvmlGpuInstanceGetComputeInstanceById", gi, ci_id,
                           what="open compute instance %d/%d" % (gi_id, ci_id), gpu=gpu)
            ci_info = self.call("nvmlComputeInstanceGetInfo", ci, what="read compute instance %d/%d" % (gi_id, ci_id),
                                gpu=gpu)
            devices.append({"uuid": text(self.call("nvmlDeviceGetUUID", handle, what="read a MIG device UUID",
                                                   gpu=gpu)),
                            "gpu_instance_id": gi_id, "compute_instance_id": ci_id,
                            "gi_start": gi_info.placement.start, "gi_size": gi_info.placement.size,
                            "ci_start": ci_info.placement.start, "ci_size": ci_info.placement.size})
        devices.sort(key=lambda d: (d["gi_start"], d["ci_start"]))
        return devices

    def mig_device_at(self, gpu, gi_start, ci_start):
        """The MIG UUID of the MIG device at GPU-instance start `gi_start`, compute-instance start `ci_start`."""
        mode = self.mig_mode(gpu)
        if not (mode and mode[0]):
            raise NvmlError("%s is not in MIG mode: %s selects a MIG device"
                            % (gpu.describe(), mig_placement_selector(gpu.index, gi_start, ci_start)),
                            kind="invalid_selection")
        devices = self.mig_devices(gpu)
        for device in devices:
            if (device["gi_start"], device["ci_start"]) == (gi_start, ci_start):
                return device["uuid"]
        raise NvmlError("%s has no MIG device whose GPU instance starts at memory slice %d and compute instance at "
                        "compute slice %d; its MIG devices: %s" % (
                            gpu.describe(), gi_start, ci_start,
                            ", ".join("%s (%s)" % (mig_placement_selector(gpu.uuid, d["gi_start"], d["ci_start"]),
                                                   d["uuid"]) for d in devices) or "none"),
                        kind="invalid_selection")

    def mig_device_uuid_parent(self, uuid):
        """(parent Gpu, handle) for a MIG device UUID."""
        handle = self.call("nvmlDeviceGetHandleByUUID", uuid, what="find MIG device %s" % uuid)
        parent = self.call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle,
                           what="find the parent GPU of %s" % uuid)
        parent_uuid = text(self.call("nvmlDeviceGetUUID", parent, what="read a GPU UUID"))
        return self.find(parent_uuid), handle

    def compute_processes(self, handle, gpu=None):
        """[{pid, name, used_gpu_memory, gpu_instance_id, compute_instance_id}] running on a device handle."""
        processes = []
        for proc in self.call("nvmlDeviceGetComputeRunningProcesses", handle,
                              what="list compute processes", gpu=gpu):
            try:
                name = text(self.pynvml.nvmlSystemGetProcessName(proc.pid))
            except self.pynvml.NVMLError:
                name = None
            gi_id = getattr(proc, "gpuInstanceId", NO_INSTANCE)
            ci_id = getattr(proc, "computeInstanceId", NO_INSTANCE)
            processes.append({
                "pid": proc.pid,
                "name": name,
                "used_gpu_memory": proc.usedGpuMemory,
                "gpu_instance_id": None if gi_id == NO_INSTANCE else gi_id,
                "compute_instance_id": None if ci_id == NO_INSTANCE else ci_id,
            })
        return processes
