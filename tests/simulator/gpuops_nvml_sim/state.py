"""Simulated GPU state: a JSON file shared by every process of a (test) node, with file locking."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import tempfile
import uuid as uuidlib

from . import models

STATE_ENV = "GPUOPS_NVML_SIM_STATE"
DEFAULT_STATE_PATH = "/var/lib/gpuops-nvml-sim/state.json"
FORMAT_VERSION = 1
NVML_ERROR_IN_USE = 19


class SimulatorError(Exception):
    """A request to the simulator itself (not an NVML call) that cannot be honoured."""


# nvmlGpuFabricState_t and what the simulated fabric answers (docs/simulator.md, "NVLink and the fabric").
FABRIC_STATES = {"not_supported": 0, "not_started": 1, "in_progress": 2, "completed": 3}
NVML_SUCCESS = 0
NVML_ERROR_UNKNOWN = 999
DEFAULT_CLIQUE_ID = 1
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def nvlink_defaults(spec, nvswitch, clique_id=DEFAULT_CLIQUE_ID, cluster_uuid=ZERO_UUID):
    """A GPU's `fabric` (None: the GPU does not answer the fabric query) and `nvlink` (per-link 0/1) state.

    On an NVSwitch board the fabric manager has registered the GPU (state completed, status success) and every
    link is up. Off one, a Hopper GPU answers state NOT_SUPPORTED with status UNKNOWN_ERROR (as reported for
    single-GPU H200 and H100 PCIe systems) and its links are down.
    """
    if not spec["fabric_info"]:
        fabric = None
    elif nvswitch:
        fabric = {"state": FABRIC_STATES["completed"], "status": NVML_SUCCESS, "clique_id": int(clique_id),
                  "cluster_uuid": str(uuidlib.UUID(cluster_uuid))}
    else:
        fabric = {"state": FABRIC_STATES["not_supported"], "status": NVML_ERROR_UNKNOWN, "clique_id": 0,
                  "cluster_uuid": ZERO_UUID}
    return {"fabric": fabric, "nvlink": [1 if nvswitch else 0] * spec["nvlink_links"]}


def gpu_nvlink(gpu):
    """(fabric, nvlink) of a GPU, with the defaults for a state written before they were modelled."""
    if "fabric" in gpu and "nvlink" in gpu:
        return gpu["fabric"], gpu["nvlink"]
    defaults = nvlink_defaults(models.model(gpu["model"]), False)
    return gpu.get("fabric", defaults["fabric"]), gpu.get("nvlink", defaults["nvlink"])


def configured_state_path():
    """The state file the simulator should use, or None when it is not configured on this host."""
    path = os.environ.get(STATE_ENV)
    if path:
        return path
    if os.path.exists(DEFAULT_STATE_PATH):
        return DEFAULT_STATE_PATH
    return None


def _stable_uuid(seed, prefix):
    digest = hashlib.sha1(seed.encode()).hexdigest()
    return prefix + str(uuidlib.UUID(digest[:32]))


def new_mig_uuid(gpu, gi_id, ci_id):
    gpu["mig_uuid_serial"] = gpu.get("mig_uuid_serial", 0) + 1
    return _stable_uuid("%s/%d/%d/%d" % (gpu["uuid"], gi_id, ci_id, gpu["mig_uuid_serial"]), "MIG-")


def parse_gpu_spec(text):
    """`h100-80gb:8,a100-40gb:2` -> ["h100-80gb"] * 8 + ["a100-40gb"] * 2."""
    names = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _unused, count = item.partition(":")
        models.model(name)
        try:
            count = int(count) if count else 1
        except ValueError:
            raise SimulatorError("bad GPU count in %r: expected MODEL[:COUNT]" % item)
        if count < 1:
            raise SimulatorError("GPU count must be at least 1 in %r" % item)
        names.extend([name] * count)
    if not names:
        raise SimulatorError("no GPUs given: expected MODEL[:COUNT][,MODEL[:COUNT]...]")
    return names


def new_state(model_names, driver_version="580.159.04", cuda_driver_version=13000, seed="gpuops", nvswitch=False,
              clique_id=DEFAULT_CLIQUE_ID, cluster_uuid=None, absent_functions=()):
    """A fresh node. `nvswitch`: the GPUs sit on one HGX board behind NVSwitches (fabric registered by the
    fabric manager, every NVLink up); `absent_functions`: NVML entry points this driver lacks."""
    if nvswitch:
        lacking = sorted(set(name for name in model_names if not models.model(name)["nvswitch_board"]))
        if lacking:
            raise SimulatorError("%s never sit on an NVSwitch board: --nvswitch needs SXM GPUs (%s)" % (
                ", ".join(lacking), ", ".join(sorted(n for n, m in models.MODELS.items() if m["nvswitch_board"]))))
    gpus = []
    for index, name in enumerate(model_names):
        spec = models.model(name)
        bus = 0x18 + 0x10 * index
        gpus.append({
            "model": name,
            "uuid": _stable_uuid("%s/%s/%d" % (seed, name, index), "GPU-"),
            "bus_id": "00000000:%02X:00.0" % bus,
            "serial": "16538230%05d" % (44444 + index),
            "minor_number": index,
            "persistence_mode": 0,
            "compute_mode": 0,
            "mig_current": 0,
            "mig_pending": 0,
            "ecc_mode": [1, 1],
            "accounting_mode": 0,
            "lost": False,
            "gpu_instances": [],
            "processes": [],
            "mig_uuid_serial": 0,
            "memory_reserved": spec["memory_reserved"],
        })
    board_uuid = cluster_uuid or str(uuidlib.UUID(hashlib.sha1(("%s/fabric" % seed).encode()).hexdigest()[:32]))
    for gpu in gpus:
        gpu.update(nvlink_defaults(models.model(gpu["model"]), nvswitch, clique_id, board_uuid))
    return {
        "format": FORMAT_VERSION,
        "nvswitch": bool(nvswitch),
        "absent_functions": sorted(set(absent_functions)),
        "driver_version": driver_version,
        "nvml_version": "%d.%s" % (cuda_driver_version // 1000, driver_version),
        "cuda_driver_version": cuda_driver_version,
        "library_present": True,
        "driver_loaded": True,
        "require_root": True,
        "gpus": gpus,
        "faults": [],
        "boot_id": 1,
    }


class StateStore(object):
    """Reads and writes the state file; writers hold an exclusive lock and replace the file atomically."""

    def __init__(self, path):
        self.path = path
        self.lock_path = path + ".lock"
        self._cache_key = None
        self._cache = None

    @contextlib.contextmanager
    def _locked(self, mode):
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            fd = os.open(self.lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read_file(self):
        try:
            with open(self.path) as handle:
                data = json.load(handle)
        except (IOError, OSError) as exc:
            raise SimulatorError("cannot read simulator state %s: %s" % (self.path, exc))
        except ValueError as exc:
            raise SimulatorError("simulator state %s is not valid JSON: %s" % (self.path, exc))
        if data.get("format") != FORMAT_VERSION:
            raise SimulatorError("simulator state %s has format %r, expected %d"
                                 % (self.path, data.get("format"), FORMAT_VERSION))
        return data

    def read(self):
        """A snapshot of the state (callers must not modify it)."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise SimulatorError("cannot read simulator state %s: %s" % (self.path, exc))
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key != self._cache_key:
            with self._locked(fcntl.LOCK_SH):
                self._cache = self._read_file()
            self._cache_key = key
        return self._cache

    def _write_file(self, data):
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.chmod(tmp, 0o644)
            os.rename(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._cache_key = None

    @contextlib.contextmanager
    def transaction(self):
        """Yields a mutable copy of the state; it is written back when the block ends without error."""
        with self._locked(fcntl.LOCK_EX):
            data = self._read_file()
            working = copy.deepcopy(data)
            yield working
            if working != data:
                self._write_file(working)

    def create(self, data, force=False):
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory)
        with self._locked(fcntl.LOCK_EX):
            if os.path.exists(self.path) and not force:
                raise SimulatorError("simulator state %s exists (use force to replace it)" % self.path)
            self._write_file(data)


def find_gpu(state, key):
    """A GPU by index (int or digits), UUID or PCI bus id."""
    text = str(key)
    for index, gpu in enumerate(state["gpus"]):
        if text == str(index) or text == gpu["uuid"] or text.lower() == gpu["bus_id"].lower():
            return gpu
    raise SimulatorError("no simulated GPU %r" % key)


def drop_instances(gpu):
    gpu["gpu_instances"] = []


def reset_gpus(state, bus_ids):
    """`nvidia-smi -r -i BUS_IDS`: refused while processes use a target GPU; applies a pending MIG mode."""
    targets = [find_gpu(state, bus_id) for bus_id in bus_ids] if bus_ids else list(state["gpus"])
    busy = [gpu for gpu in targets if gpu["processes"]]
    if busy:
        raise SimulatorError("GPU %s is in use by processes %s; reset refused" % (
            busy[0]["bus_id"], ", ".join(str(p["pid"]) for p in busy[0]["processes"])))
    for gpu in targets:
        drop_instances(gpu)
        gpu["mig_current"] = gpu["mig_pending"]
        gpu["lost"] = False
    return targets


def reboot(state):
    """What a node reboot drops: instances, processes, persistence, compute mode, and MIG mode on Hopper+."""
    for gpu in state["gpus"]:
        spec = models.model(gpu["model"])
        drop_instances(gpu)
        gpu["processes"] = []
        gpu["persistence_mode"] = 0
        gpu["compute_mode"] = 0
        gpu["lost"] = False
        if spec["mig_mode_change"] == "immediate":
            gpu["mig_current"] = gpu["mig_pending"] = 0
        else:
            gpu["mig_current"] = gpu["mig_pending"]
    state["boot_id"] = state.get("boot_id", 0) + 1


def add_process(state, gpu_key, pid, name, memory_mib=256, gpu_instance_id=None, compute_instance_id=None):
    gpu = find_gpu(state, gpu_key)
    if gpu_instance_id is not None:
        gi = [g for g in gpu["gpu_instances"] if g["id"] == gpu_instance_id]
        if not gi or not [c for c in gi[0]["compute_instances"] if c["id"] == compute_instance_id]:
            raise SimulatorError("no compute instance %s/%s on GPU %s" % (gpu_instance_id, compute_instance_id,
                                                                          gpu["uuid"]))
    gpu["processes"].append({
        "pid": int(pid),
        "name": name,
        "used_memory": int(memory_mib) * 1024 * 1024,
        "gpu_instance_id": gpu_instance_id,
        "compute_instance_id": compute_instance_id,
    })


def remove_process(state, pid):
    found = False
    for gpu in state["gpus"]:
        before = len(gpu["processes"])
        gpu["processes"] = [p for p in gpu["processes"] if p["pid"] != int(pid)]
        found = found or len(gpu["processes"]) != before
    if not found:
        raise SimulatorError("no simulated process with pid %s" % pid)


def add_fault(state, function, call, code):
    if call < 1:
        raise SimulatorError("fault call number must be >= 1")
    state["faults"].append({"function": function, "call": int(call), "code": int(code), "seen": 0})


def set_fabric(state, gpu_keys=None, fabric_state=None, status=None, clique_id=None, cluster_uuid=None):
    """What the fabric manager would change: registration state, probe status, clique id, cluster UUID."""
    targets = [find_gpu(state, key) for key in gpu_keys] if gpu_keys else list(state["gpus"])
    for gpu in targets:
        fabric, nvlink = gpu_nvlink(gpu)
        if fabric is None:
            raise SimulatorError("%s (%s) does not report an NVLink fabric (NVML answers NOT_SUPPORTED)"
                                 % (gpu["bus_id"], gpu["model"]))
        fabric = dict(fabric)
        if fabric_state is not None:
            if fabric_state not in FABRIC_STATES:
                raise SimulatorError("fabric state must be one of %s" % ", ".join(sorted(FABRIC_STATES)))
            fabric["state"] = FABRIC_STATES[fabric_state]
        if status is not None:
            fabric["status"] = int(status)
        if clique_id is not None:
            fabric["clique_id"] = int(clique_id)
        if cluster_uuid is not None:
            try:
                fabric["cluster_uuid"] = str(uuidlib.UUID(cluster_uuid))
            except ValueError:
                raise SimulatorError("cluster UUID %r is not a UUID" % cluster_uuid)
        gpu["fabric"], gpu["nvlink"] = fabric, list(nvlink)
    return targets


def set_nvlink(state, gpu_keys=None, links=None, active=True):
    """Bring NVLink links up or down (all links of the GPUs when `links` is empty)."""
    targets = [find_gpu(state, key) for key in gpu_keys] if gpu_keys else list(state["gpus"])
    for gpu in targets:
        fabric, nvlink = gpu_nvlink(gpu)
        nvlink = list(nvlink)
        if not nvlink:
            raise SimulatorError("%s (%s) has no NVLink" % (gpu["bus_id"], gpu["model"]))
        for link in (links if links else range(len(nvlink))):
            if not 0 <= int(link) < len(nvlink):
                raise SimulatorError("%s (%s) has links 0-%d, not %s"
                                     % (gpu["bus_id"], gpu["model"], len(nvlink) - 1, link))
            nvlink[int(link)] = 1 if active else 0
        gpu["fabric"], gpu["nvlink"] = fabric, nvlink
    return targets


def set_function_absent(state, function, absent=True):
    """Make the simulated driver lack (or have again) an NVML entry point; a process sees it when it loads
    the library, as with a real driver's symbols."""
    names = set(state.get("absent_functions", ()))
    if absent:
        names.add(function)
    else:
        names.discard(function)
    state["absent_functions"] = sorted(names)
