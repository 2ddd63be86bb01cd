# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The MPS desired-state contract: options, the one validator, the one client-environment writer. Plain Python.

`MPS_SPEC` is the nvidia_mps module's argument spec; `validate()` checks and normalizes a plain dict of those
options for every front end (the module, the nvidia_mps_instances planner the mps role runs, the role's systemd
helper reading the JSON the role wrote). `client_environment()` is the only writer of a client's environment:
the module returns it and the mps role writes it to /etc/gpuops/mps/<name>.env unchanged.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import (
    SELECTOR_SPEC,
    GpuopsError,
    argument_spec,
    check_options,
    check_selector,
)

CONTROL_BINARY = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
DEFAULT_LOG_DIRECTORY = "/var/log/nvidia-mps"
COMPUTE_MODE_CHOICES = ["exclusive_process", "default", "keep"]

# Settings of a daemon, without where it lives (the mps role derives that from the instance name).
DAEMON_SPEC = argument_spec(SELECTOR_SPEC, {
    "user": {"type": "str"},
    "group": {"type": "str"},
    "multiuser": {"type": "bool", "default": False},
    "default_active_thread_percentage": {"type": "float"},
    "default_device_pinned_mem_limit": {"type": "dict"},
    "default_client_priority": {"type": "int", "choices": [0, 1]},
    "compute_mode": {"type": "str", "choices": COMPUTE_MODE_CHOICES, "default": "keep"},
})

MPS_SPEC = argument_spec(DAEMON_SPEC, {
    "state": {"type": "str", "choices": ["started", "stopped", "restarted"], "default": "started"},
    "pipe_directory": {"type": "path", "default": DEFAULT_PIPE_DIRECTORY},
    "log_directory": {"type": "path", "default": DEFAULT_LOG_DIRECTORY},
    "binary": {"type": "path"},
    "timeout": {"type": "int", "default": 15},
})

_MEMORY_LIMIT = re.compile(r"^\s*([0-9]+)\s*([MG])\s*$", re.IGNORECASE)
_UNSET_LIMITS = ("", "0", "0M", "0G", "N/A", "NONE", "UNLIMITED", "NOT SET")
_UUID = re.compile(r"^(GPU|MIG)-[0-9a-fA-F-]+$")


class MpsError(GpuopsError):
    """An MPS failure; `log_tail` (the daemon's last log lines) is returned with it."""

    def __init__(self, message, kind="mps", log_tail=None):
        super(MpsError, self).__init__(message, kind=kind, details={"log_tail": log_tail} if log_tail else None)
        self.log_tail = log_tail or []


def parse_memory_limit(value, device=None):
    """`20G`, `512M` (as nvidia-cuda-mps-control takes them) -> canonical text; anything else is an error.

    The one validator of a pinned memory limit, for the module, the role's planner and the helper.
    """
    match = _MEMORY_LIMIT.match(str(value))
    if not match or int(match.group(1)) < 1:
        where = " for device %s" % device if device is not None else ""
        raise MpsError("bad default_device_pinned_mem_limit %r%s: use a positive whole number of megabytes or "
                       "gigabytes such as 512M or 20G" % (value, where), kind="invalid_argument")
    return "%d%s" % (int(match.group(1)), match.group(2).upper())


def memory_limit_bytes(value):
    """The control daemon's answer (`20G`, `20480M`, `0`) as bytes; None when no limit is set."""
    value = str(value).strip()
    if value.upper() in _UNSET_LIMITS:
        return None
    match = _MEMORY_LIMIT.match(value)
    if not match:
        return value
    return int(match.group(1)) * (1 << (30 if match.group(2).upper() == "G" else 20))


def normalize_device_key(key):
    """A pinned-memory-limit device: a CUDA ordinal as the daemon sees it (0 = first of `devices`) or a UUID."""
    key_text = str(key).strip()
    if key_text.isdigit() or _UUID.match(key_text):
        return key_text
    raise MpsError("default_device_pinned_mem_limit keys must be CUDA device ordinals as the daemon sees them "
                   "(0 = the first of `devices`) or GPU-/MIG- UUIDs; got %r" % (key,), kind="invalid_argument")


def number_text(value):
    return ("%d" % value) if float(value).is_integer() else ("%g" % value)


def validate(params, spec=None, where=None):
    """Check and normalize the desired configuration before anything touches the node (no NVML)."""
    spec = MPS_SPEC if spec is None else spec
    config = check_options(spec, params, where=where)
    prefix = "%s: " % where if where else ""
    try:
        check_selector(config)
    except GpuopsError as exc:
        raise MpsError(prefix + exc.message, kind=exc.kind)
    for name in ("pipe_directory", "log_directory"):
        if name not in spec:
            continue
        path = config.get(name)
        if not path or not os.path.isabs(path):
            raise MpsError("%s%s must be an absolute path, got %r" % (prefix, name, path), kind="invalid_argument")
        config[name] = os.path.normpath(path)
    if "pipe_directory" in spec and config["pipe_directory"] == config["log_directory"]:
        raise MpsError(prefix + "pipe_directory and log_directory must differ", kind="invalid_argument")
    percentage = config.get("default_active_thread_percentage")
    if percentage is not None and not 1 <= percentage <= 100:
        raise MpsError("%sdefault_active_thread_percentage must be a number from 1 to 100, got %s"
                       % (prefix, number_text(percentage)), kind="invalid_argument")
    limits = {}
    try:
        for key, value in (config.get("default_device_pinned_mem_limit") or {}).items():
            device = normalize_device_key(key)
            limits[device] = parse_memory_limit(value, device)
    except MpsError as exc:
        raise MpsError(prefix + exc.message, kind=exc.kind)
    devices = config["devices"]
    ordinals = [int(k) for k in limits if k.isdigit()]
    if devices != "all" and ordinals and max(ordinals) >= len(devices):
        raise MpsError("%sdefault_device_pinned_mem_limit names device %d but the daemon serves only %d device(s): "
                       "ordinals count within `devices`, from 0" % (prefix, max(ordinals), len(devices)),
                       kind="invalid_argument")
    config["default_device_pinned_mem_limit"] = limits
    if config.get("group") and not config.get("user"):
        raise MpsError(prefix + "group needs user (the daemon's group defaults to the user's primary group)",
                       kind="invalid_argument")
    return config


def selects_devices(config):
    """Whether the daemon is limited to some devices (else it sees every GPU and CUDA_VISIBLE_DEVICES is unset)."""
    return config["devices"] != "all" or bool(config.get("device_filter"))


def client_environment(config, devices):
    """The environment a client of this daemon needs, and the only place it is written.

    CUDA_VISIBLE_DEVICES names the daemon's devices (GPU or MIG UUIDs): a client that does not set it still sees
    every GPU of the node through NVML, and CUDA initialisation fails when the MPS server serves fewer devices
    (seen with one daemon per GPU on a two-GPU H200 node: `device=1, num_gpus=1`). UUIDs, not indices, because
    indices are renumbered inside CUDA_VISIBLE_DEVICES and MIG devices have none.
    """
    env = {"CUDA_MPS_PIPE_DIRECTORY": config["pipe_directory"],
           "CUDA_MPS_LOG_DIRECTORY": config["log_directory"]}
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(d["uuid"] for d in devices)
    limits = config["default_device_pinned_mem_limit"]
    if limits:
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join("%s=%s" % item for item in sorted(limits.items()))
    if config.get("default_active_thread_percentage") is not None:
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = number_text(config["default_active_thread_percentage"])
    if config.get("default_client_priority") is not None:
        env["CUDA_MPS_CLIENT_PRIORITY"] = str(config["default_client_priority"])
    return env


def refresh_client_environment_file(path, env):
    """Rewrite the values of `env`'s variables in an existing client environment file where they differ.

    The file is written by the mps role (template, comments and all); a daemon whose devices are MIG placements
    resolves to new MIG UUIDs after the instances were recreated, so its start brings CUDA_VISIBLE_DEVICES in the
    file up to date. Only lines `NAME=value` of variables in `env` change; nothing is added. Returns the names of
    the variables rewritten ([] when the file is missing or already right).
    """
    try:
        with open(path) as handle:
            lines = handle.read().split("\n")
    except (IOError, OSError):
        return []
    rewritten = []
    for position, line in enumerate(lines):
        name, sep, value = line.partition("=")
        if sep and name in env and not name.startswith("#") and value != env[name]:
            lines[position] = "%s=%s" % (name, env[name])
            rewritten.append(name)
    if rewritten:
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            handle.write("\n".join(lines))
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    return rewritten
