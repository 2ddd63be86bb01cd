# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Persistence-mode engine: read every selected GPU, plan, then write. Plain Python: no Ansible imports.

NVML's persistence flag reverts to disabled at every reboot; nvidia-persistenced (the daemon NVIDIA
recommends) enables it at start and disables it again when it stops. `daemon_status()` tells the two apart so
that the module can warn when the flag it sets will not survive a reboot.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import SELECTOR_SPEC, argument_spec, check_options
from ansible_collections.gpuops.nvidia.plugins.module_utils._host import process_alive
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlError

RUN_DIR = "/var/run/nvidia-persistenced"
PID_FILE = "nvidia-persistenced.pid"
SOCKET_FILE = "socket"

STATES = ("enabled", "disabled")

PERSISTENCE_SPEC = argument_spec(SELECTOR_SPEC, {
    "state": {"type": "str", "choices": list(STATES), "default": "enabled"},
    "persistenced_run_dir": {"type": "path", "default": RUN_DIR},
})

LEGACY_WARNING = (
    "persistence mode was enabled through NVML's legacy flag with no nvidia-persistenced running: it does not "
    "survive a reboot. Run the daemon NVIDIA recommends, e.g. with the gpuops.nvidia.persistenced role.")
DAEMON_WARNING = (
    "nvidia-persistenced (pid %s) is running: it enables persistence mode again whenever it (re)starts, and a "
    "node reboot starts it. To keep persistence disabled, stop and disable the nvidia-persistenced service "
    "(or start it with --no-persistence-mode).")


def _socket_answers(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(path)
    except (OSError, socket.timeout):
        return False
    finally:
        sock.close()
    return True


def daemon_status(run_dir=RUN_DIR):
    """Whether nvidia-persistenced runs: {running, pid, evidence}.

    Evidence is `pid_file` (its pid file names a live process) or `socket` (its RPC socket accepts a
    connection); a pid file naming a dead process and a socket nobody listens on are leftovers, not a daemon.
    """
    pid = None
    try:
        with open(os.path.join(run_dir, PID_FILE)) as handle:
            content = handle.read().strip()
        pid = int(content.split()[0]) if content else None
    except (IOError, OSError, ValueError, IndexError):
        pid = None
    if pid is not None and pid > 0 and process_alive(pid):
        return {"running": True, "pid": pid, "evidence": "pid_file"}
    if _socket_answers(os.path.join(run_dir, SOCKET_FILE)):
        return {"running": True, "pid": None, "evidence": "socket"}
    return {"running": False, "pid": None, "evidence": None}


def _mode_name(nvml, value):
    return "enabled" if value == nvml.pynvml.NVML_FEATURE_ENABLED else "disabled"


def read_mode(nvml, gpu):
    value = nvml.call("nvmlDeviceGetPersistenceMode", gpu.handle, what="read the persistence mode", gpu=gpu)
    return _mode_name(nvml, value)


def _gpu_entry(gpu, before, after):
    return {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "bus_id": gpu.bus_id,
        "name": gpu.name,
        "before": before,
        "after": after,
        "changed": before != after,
    }


def _diff_key(gpu):
    return "GPU %d (%s)" % (gpu.index, gpu.uuid)


def ensure(nvml, params, check_mode=False):
    """Bring every selected GPU's persistence mode to `params["state"]`; returns the result dictionary.

    `params` is checked against PERSISTENCE_SPEC. All selected GPUs are read before any is written, so a GPU
    that cannot report (or does not support) persistence mode fails the run with nothing changed. A failure
    while writing raises NvmlError whose message names the GPUs already changed and whose details carry the
    per-GPU entries and `changed`.
    """
    params = check_options(PERSISTENCE_SPEC, params)
    state, run_dir = params["state"], params["persistenced_run_dir"]
    gpus = nvml.select(devices=params["devices"], device_filter=params["device_filter"])
    plan = [(gpu, read_mode(nvml, gpu)) for gpu in gpus]

    mode = nvml.pynvml.NVML_FEATURE_ENABLED if state == "enabled" else nvml.pynvml.NVML_FEATURE_DISABLED
    entries = []
    for position, (gpu, before) in enumerate(plan):
        if before != state and not check_mode:
            try:
                nvml.call("nvmlDeviceSetPersistenceMode", gpu.handle, mode,
                          what="%s persistence mode" % ("enable" if state == "enabled" else "disable"), gpu=gpu)
                # Disabling persistence invalidates the handle of a GPU with its own NUMA memory (GH200):
                # find the GPU again by UUID before reading the mode back.
                handle = nvml.call("nvmlDeviceGetHandleByUUID", gpu.uuid, what="find the GPU again", gpu=gpu)
                gpu.handle = handle
                after = read_mode(nvml, gpu)
            except NvmlError as exc:
                done = [e for e in entries if e["changed"]]
                message = exc.message
                if done:
                    message = "%s; already changed before this failure: %s" % (
                        message, ", ".join("GPU %d (%s)" % (e["index"], e["uuid"]) for e in done))
                partial = entries + [_gpu_entry(g, b, b) for g, b in plan[position:]]
                raise NvmlError(message, kind=exc.kind, nvml_code=exc.nvml_code,
                                details={"gpus": partial, "changed": bool(done)})
            if after != state:
                raise NvmlError("%s still reports persistence mode %s after it was set to %s"
                                % (gpu.describe(), after, state), kind="not_applied")
        else:
            after = state
        entries.append(_gpu_entry(gpu, before, after))

    changed = any(entry["changed"] for entry in entries)
    daemon = daemon_status(run_dir)
    warnings = []
    if state == "enabled" and changed and not daemon["running"]:
        warnings.append(LEGACY_WARNING)
    if state == "disabled" and daemon["running"]:
        warnings.append(DAEMON_WARNING % (daemon["pid"] if daemon["pid"] is not None else "unknown"))
    if check_mode and changed and os.geteuid() != 0:
        warnings.append("check mode ran as uid %d: setting persistence mode needs root, so the real run needs "
                        "become" % os.geteuid())
    return {
        "changed": changed,
        "state": state,
        "gpus": entries,
        "persistenced": daemon,
        "warnings": warnings,
        "diff": {
            "before": dict((_diff_key(gpu), before) for gpu, before in plan),
            "after": dict((_diff_key(gpu), state) for gpu, dummy in plan),
        },
    }
