# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A node's nvshare schedulers and clients, planned and validated before anything changes. Plain Python.

The nvshare role's preflight runs this (through the nvidia_nvshare_instances module) on the node. It validates the
desired state with `_nvshare.validate`, resolves the GPUs through the NVML seam (index, UUID, PCI bus id,
device_filter), refuses GPUs in MIG mode and GPUs that an MPS daemon of the mps role serves (its desired states
in /etc/gpuops/mps/daemon/*.json, resolved the same way), resolves each client service to its GPU, and computes
every scheduler's and client's environment and socket binding. It also reads what runs now (systemctl, /proc) to
say which scheduler needs a start, a restart (start-time settings drifted) or only its settings applied again, and
which client services still run without their wiring. Every problem is reported at once, before the first change.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import hashlib
import json
import os
import re
import shutil

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
from ansible_collections.gpuops.nvidia.plugins.module_utils._host import process_environ
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvshare import (
    APPLIED_NAME,
    DROPIN_NAME,
    FILES,
    GPU_ROOT,
    MIN_SENSIBLE_TQ,
    SOCKET_DIR,
    SOCKET_NAME,
    archive_kind,
    glibc_tuple,
    instance_dir,
    read_applied,
    unit_name,
    validate,
)

INSTANCE_DIR = re.compile(r"^GPU-[0-9A-Fa-f-]+$")
UNIT_INSTANCE = re.compile(r"^nvshare-scheduler@(.+)\.service$")
ACTIVE = ("active", "activating", "reloading")


class Node:
    """Where the plan looks on the node; tests point it at temporary directories and a fake runner."""

    def __init__(self, run, socket_dir=SOCKET_DIR, gpu_root=GPU_ROOT, systemd_dir="/etc/systemd/system",
                 proc="/proc", var_run="/var/run", glibc=None, systemctl=None):
        self.run = run
        self.socket_dir = socket_dir
        self.gpu_root = gpu_root
        self.systemd_dir = systemd_dir
        self.proc = proc
        self.var_run = var_run
        self._glibc = glibc
        if systemctl is None:  # find it; systemctl without systemd running (a container) answers nothing useful
            systemctl = shutil.which("systemctl") if os.path.isdir("/run/systemd/system") else None
        self.systemctl = systemctl or None

    def glibc(self):
        if self._glibc is not None:
            return self._glibc or None
        try:
            name, _sep, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
        except (AttributeError, ValueError, OSError):
            return None
        return version if name == "glibc" else None

    def unit(self, name):
        """{LoadState, ActiveState, MainPID} of a unit, or None without systemd."""
        if not self.systemctl:
            return None
        rc, out, _err = self.run([self.systemctl, "show", "--property=LoadState,ActiveState,MainPID", "--", name])
        if rc != 0:
            return {"LoadState": "not-found", "ActiveState": "inactive", "MainPID": "0"}
        status = {}
        for line in (out or "").splitlines():
            key, _sep, value = line.partition("=")
            status[key.strip()] = value.strip()
        return status

    def scheduler_units(self):
        """Instances systemd knows (loaded, enabled, failed), by name."""
        names = set()
        for link in glob.glob(os.path.join(self.systemd_dir, "*.wants", "nvshare-scheduler@*.service")):
            match = UNIT_INSTANCE.match(os.path.basename(link))
            if match:
                names.add(match.group(1))
        if self.systemctl:
            rc, out, _err = self.run([self.systemctl, "list-units", "--all", "--plain", "--no-legend",
                                      "nvshare-scheduler@*.service"])
            for line in (out or "").splitlines() if rc == 0 else []:
                match = UNIT_INSTANCE.match(line.split()[0]) if line.split() else None
                if match:
                    names.add(match.group(1))
        for path in glob.glob(os.path.join(self.gpu_root, "GPU-*")):
            if os.path.isdir(path) and INSTANCE_DIR.match(os.path.basename(path)):
                names.add(os.path.basename(path))
        return names

    def client_dropins(self):
        """Services that carry this role's drop-in."""
        found = []
        for path in glob.glob(os.path.join(self.systemd_dir, "*.service.d", DROPIN_NAME)):
            found.append(os.path.basename(os.path.dirname(path))[:-2])
        return sorted(found)

    def bound_dir(self, pid):
        """(st_dev, st_ino) of /run/nvshare as process `pid` sees it, or None when it cannot be read."""
        try:
            info = os.stat(os.path.join(self.proc, str(pid), "root", self.socket_dir.lstrip("/")))
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    def host_dir(self, instance):
        try:
            info = os.stat(instance_dir(instance, self.gpu_root))
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    def exe_replaced(self, pid):
        try:
            return os.readlink(os.path.join(self.proc, str(pid), "exe")).endswith(" (deleted)")
        except OSError:
            return False

    def environ(self, pid):
        if self.proc == "/proc":
            return process_environ(pid)
        try:
            with open(os.path.join(self.proc, str(pid), "environ"), "rb") as handle:
                raw = handle.read()
        except (IOError, OSError):
            return None
        return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def _running(status):
    if not status:
        return False, None
    pid = int(status.get("MainPID") or 0)
    return status.get("ActiveState") in ACTIVE and pid > 0, pid or None


def _binding_drift(node, pid, instance):
    seen, wanted = node.bound_dir(pid), node.host_dir(instance)
    if seen is not None and wanted is not None and seen != wanted:
        return ["its /run/nvshare is not %s (a different GPU's scheduler directory, or none)"
                % instance_dir(instance)]
    return []


def _mps_served(nvml, config_dir, problems):
    """{GPU UUID: (daemon name, path)} for every GPU an MPS daemon of the mps role serves (its desired state)."""
    served = {}
    for path in sorted(glob.glob(os.path.join(config_dir, "daemon", "*.json"))):
        name = os.path.basename(path)[:-5]
        try:
            with open(path) as handle:
                config = json.load(handle)
            entries = nvml.resolve_devices(config.get("devices", "all"), config.get("device_filter"), allow_mig=True)
        except (IOError, OSError, ValueError) as exc:
            problems.append("cannot read MPS daemon %s's desired state %s (%s): fix or remove it, or set allow_mps"
                            % (name, path, exc))
            continue
        except GpuopsError as exc:
            problems.append("cannot tell which GPUs MPS daemon %s (%s) serves: %s; fix or remove it, or set "
                            "allow_mps" % (name, path, exc.message))
            continue
        for entry in entries:
            served.setdefault(entry["parent_uuid"] or entry["uuid"], (name, path))
    return served


def _install(desired, node, problems):
    archive = desired["archive"]
    facts = desired.get("archive_facts") or {}
    kind = archive_kind(archive)
    if kind == "path":
        kind = "directory" if facts.get("isdir") else "file"
    if kind == "directory":
        key = hashlib.sha256("".join(desired["file_checksums"][name] for name in sorted(FILES)).encode()).hexdigest()
        checksum = None
    else:
        checksum = desired["archive_checksum"]
        key = checksum.split(":", 1)[1].lower()
    staging = os.path.join(desired["cache_dir"], key[:16])
    glibc = node.glibc()
    if desired["install_method"] == "release":
        if glibc is None:
            problems.append("this node's C library is not glibc (or its version cannot be read): nvshare's release "
                            "binaries need glibc %s; build them on the node with install_method source"
                            % desired["release_min_glibc"])
        elif glibc_tuple(glibc) < glibc_tuple(desired["release_min_glibc"]):
            problems.append("this node's glibc is %s, older than the %s that the release binaries need "
                            "(release_min_glibc): build nvshare on the node with install_method source"
                            % (glibc, desired["release_min_glibc"]))
    name = archive.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "nvshare.tar.gz"
    return {
        "method": desired["install_method"],
        "kind": kind,
        "archive": archive,
        "checksum": checksum,
        "download": os.path.join(desired["cache_dir"], name) if kind != "directory" else None,
        "staging": staging,
        "build_dir": os.path.join(staging, "src") if desired["install_method"] == "source" else None,
        "files": dict((file_name, {"path": os.path.join(desired["prefix"], where, file_name), "mode": mode})
                      for file_name, (where, mode) in FILES.items()),
        "glibc": glibc,
    }


def _gpu_summary(gpu):
    return {"index": gpu.index, "uuid": gpu.uuid, "bus_id": gpu.bus_id, "name": gpu.name}


def plan(params, run, nvml_factory=NvmlSession, node=None):
    """{config, install, schedulers, default_device, clients, stale_schedulers, stale_clients, warnings}.

    Read-only. Raises GpuopsError listing every problem (kind invalid_argument or invalid_selection).
    """
    desired = validate(params)
    node = node or Node(run)
    warnings = []
    result = {"changed": False, "config": desired, "install": None, "schedulers": [], "default_device": None,
              "clients": [], "stale_schedulers": [], "stale_clients": [], "warnings": warnings}
    known = node.scheduler_units()
    dropins = node.client_dropins()
    if desired["state"] == "absent":
        result["stale_schedulers"] = sorted(known)
        result["stale_clients"] = [_client_status(node, service, None, desired, warnings) for service in dropins]
        return result

    problems, kinds = [], set()
    result["install"] = _install(desired, node, problems)
    if problems:
        kinds.add("invalid_argument")
    if os.path.realpath(node.var_run) != os.path.realpath(os.path.dirname(node.socket_dir)):
        problems.append("%s is not %s on this node: nvshare's compiled-in /var/run/nvshare must be the %s that "
                        "each unit binds" % (node.var_run, os.path.dirname(node.socket_dir), node.socket_dir))
        kinds.add("invalid_argument")
    try:
        with nvml_factory() as nvml:
            scheduled, by_uuid = _select(nvml, desired, problems, kinds, warnings)
            default = _default_device(nvml, desired, scheduled, by_uuid, problems, kinds)
            clients = _clients(nvml, node, desired, default, by_uuid, problems, kinds)
    except GpuopsError as exc:
        problems.append(exc.message)
        kinds.add(exc.kind)
        scheduled, default, clients = [], None, []
    if problems:
        raise GpuopsError("; ".join(problems) + " (nothing was changed)",
                          kind=kinds.pop() if len(kinds) == 1 else "invalid_argument")

    result["default_device"] = default.uuid if default else None
    for gpu in scheduled:
        result["schedulers"].append(_scheduler_status(node, gpu, desired, default, clients))
    planned = set(gpu.uuid for gpu in scheduled)
    result["stale_schedulers"] = sorted(known - planned)
    wanted = set(client["service"] for client in clients)
    for client in clients:
        result["clients"].append(_client_status(node, client["service"], client, desired, warnings))
    result["stale_clients"] = [_client_status(node, service, None, desired, warnings)
                               for service in dropins if service not in wanted]
    if desired["tq"] < MIN_SENSIBLE_TQ:
        warnings.append("tq is %d s: nvshare advises at least %d, because a client that gets the GPU first spends "
                        "seconds faulting its memory back in" % (desired["tq"], MIN_SENSIBLE_TQ))
    if desired["ld_so_preload"] and len(scheduled) > 1:
        warnings.append("ld_so_preload: every process on the node loads libnvshare.so and locks through the "
                        "scheduler at /var/run/nvshare/scheduler.sock, which is GPU %d's (default_device), whichever "
                        "GPU it computes on; bind services to their GPU with clients instead" % default.index)
    return result


def _select(nvml, desired, problems, kinds, warnings):
    try:
        gpus = nvml.select(desired["devices"], desired["device_filter"])
    except GpuopsError as exc:
        problems.append(exc.message)
        kinds.add(exc.kind)
        return [], {}
    if not gpus:
        warnings.append("devices and device_filter select no GPU on this node, so it gets no nvshare scheduler (%s)"
                        % nvml.inventory())
        return [], {}
    count = len(problems)
    served = {} if desired["allow_mps"] else _mps_served(nvml, desired["mps_config_dir"], problems)
    if len(problems) > count:
        kinds.add("invalid_argument")
    scheduled, refused = [], []
    for gpu in gpus:
        mig = nvml.mig_mode(gpu)
        if mig and mig[0]:
            if desired["allow_mig"]:
                warnings.append("%s is in MIG mode (allow_mig): CUDA sees its MIG devices, not the GPU, so a client "
                                "bound to %s finds no CUDA device" % (gpu.describe(), gpu.uuid))
            else:
                refused.append(gpu.index)
                problems.append("%s is in MIG mode: CUDA sees its MIG devices, not the GPU, so no client bound to it "
                                "could run (disable MIG, leave the GPU out of devices, or set allow_mig)"
                                % gpu.describe())
                continue
        if gpu.uuid in served:
            name, path = served[gpu.uuid]
            refused.append(gpu.index)
            problems.append("%s is served by MPS daemon %s of the mps role (%s): MPS runs its clients' work together "
                            "in its server, and the mps role's EXCLUSIVE_PROCESS compute mode lets only that server "
                            "open a CUDA context, while nvshare gives whole processes the GPU in turns (remove the "
                            "daemon, leave the GPU out of devices, or set allow_mps)" % (gpu.describe(), name, path))
            continue
        scheduled.append(gpu)
    if refused:
        kinds.add("invalid_selection")
        usable = [str(gpu.index) for gpu in gpus if gpu.index not in refused]
        problems.append("GPUs nvshare can take here: %s" % (", ".join(usable) if usable else "none of those selected"))
    return scheduled, dict((gpu.uuid, gpu) for gpu in scheduled)


def _on_scheduled(nvml, key, by_uuid, what, problems, kinds):
    try:
        gpu = nvml.find(key)
    except GpuopsError as exc:
        problems.append("%s: %s" % (what, exc.message))
        kinds.add(exc.kind)
        return None
    if gpu.uuid not in by_uuid:
        problems.append("%s: %s gets no nvshare scheduler (devices selects %s)"
                        % (what, gpu.describe(), ", ".join("GPU %d" % g.index for g in
                                                           sorted(by_uuid.values(), key=lambda g: g.index)) or "none"))
        kinds.add("invalid_selection")
        return None
    return gpu


def _default_device(nvml, desired, scheduled, by_uuid, problems, kinds):
    if not scheduled:
        if desired["clients"] or desired["ld_so_preload"]:
            problems.append("clients and ld_so_preload need a GPU with an nvshare scheduler, and none is selected")
            kinds.add("invalid_selection")
        return None
    if desired["default_device"] is None:
        return scheduled[0]
    return _on_scheduled(nvml, desired["default_device"], by_uuid, "default_device", problems, kinds)


def _clients(nvml, node, desired, default, by_uuid, problems, kinds):
    clients = []
    for item in desired["clients"]:
        status = node.unit(item["service"]) if "@." not in item["service"] else None
        if status is not None and status.get("LoadState") == "not-found":
            problems.append("client %s does not exist on this node (systemd: not-found): install the service first "
                            "or remove it from clients" % item["service"])
            kinds.add("invalid_argument")
            continue
        if item["device"] is None:
            gpu = default
        else:
            gpu = _on_scheduled(nvml, item["device"], by_uuid, "client %s" % item["service"], problems, kinds)
        if gpu is None:
            continue
        single = desired["single_oversub"] if item["single_oversub"] is None else item["single_oversub"]
        environment = {"LD_PRELOAD": os.path.join(desired["prefix"], "lib", "libnvshare.so"),
                       "CUDA_VISIBLE_DEVICES": gpu.uuid}
        if single:
            environment["NVSHARE_ENABLE_SINGLE_OVERSUB"] = "1"
        clients.append({"service": item["service"], "gpu": _gpu_summary(gpu), "instance": gpu.uuid,
                        "unit": unit_name(gpu.uuid), "environment": environment, "restart": item["restart"],
                        "bind": {"source": instance_dir(gpu.uuid), "target": SOCKET_DIR}})
    return clients


def _scheduler_status(node, gpu, desired, default, clients):
    instance = gpu.uuid
    environment = {"CUDA_VISIBLE_DEVICES": instance}
    if desired["debug"]:
        environment["NVSHARE_DEBUG"] = "1"
    directory = instance_dir(instance, node.gpu_root)
    running, pid = _running(node.unit(unit_name(instance)))
    applied = read_applied(os.path.join(directory, APPLIED_NAME))
    drift = []
    if running:
        env = node.environ(pid)
        if env is not None:
            if env.get("CUDA_VISIBLE_DEVICES") != instance:
                drift.append("CUDA_VISIBLE_DEVICES is %r, not %s" % (env.get("CUDA_VISIBLE_DEVICES"), instance))
            if ("NVSHARE_DEBUG" in env) != desired["debug"]:
                drift.append("debug logging is %s" % ("on" if "NVSHARE_DEBUG" in env else "off"))
        if node.exe_replaced(pid):
            drift.append("its binary was replaced on disk")
        drift.extend(_binding_drift(node, pid, instance))
    want = {"pid": pid, "tq": desired["tq"], "anti_thrash": "on" if desired["anti_thrash"] else "off"}
    settled = applied is not None and all(applied.get(key) == value for key, value in want.items())
    return {
        "instance": instance,
        "unit": unit_name(instance),
        "gpu": _gpu_summary(gpu),
        "default": default is not None and default.uuid == instance,
        "directory": directory,
        "socket": os.path.join(directory, SOCKET_NAME),
        "environment": environment,
        "bind": {"source": instance_dir(instance), "target": SOCKET_DIR},
        "clients": [client["service"] for client in clients if client["instance"] == instance],
        "running": running,
        "pid": pid,
        "applied": applied,
        "restart_needed": bool(drift),
        "drift": drift,
        "configure_needed": running and not drift and not settled,
    }


def _client_status(node, service, client, desired, warnings):
    """The planned client (or a stale drop-in's service) with what runs now: active, wired, restart_needed."""
    active, pid = _running(node.unit(service) if "@." not in service else None)
    entry = dict(client or {"service": service})
    drift = []
    if active:
        env = node.environ(pid) or {}
        if client is None:
            if "libnvshare.so" in env.get("LD_PRELOAD", ""):
                warnings.append("%s still runs with libnvshare.so (pid %d) until it is restarted" % (service, pid))
        else:
            for key, value in sorted(client["environment"].items()):
                if env.get(key) != value:
                    drift.append("%s is %r, not %r" % (key, env.get(key), value))
            if node.bound_dir(pid) is not None and node.bound_dir(pid) != node.host_dir(client["instance"]):
                drift.append("/run/nvshare is not bound to %s" % client["bind"]["source"])
    entry.update(active=active, pid=pid, restart_needed=bool(drift), drift=drift)
    if drift and client is not None and not client["restart"]:
        warnings.append("%s (pid %d) runs without its nvshare wiring for GPU %d until it is restarted (%s): restart "
                        "it, or set restart: true on its client item" % (service, pid, client["gpu"]["index"],
                                                                         "; ".join(drift)))
    return entry
