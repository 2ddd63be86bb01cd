# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A set of MPS daemons for a node, planned and validated before anything changes. Plain Python.

The mps role's preflight runs this (through the nvidia_mps_instances module) on the node: it expands one daemon
per GPU or per MIG device, applies the defaults, validates every instance with the nvidia_mps validator, resolves
devices through the NVML seam, checks users, names and uniqueness after resolution, and returns for each
instance the exact desired state the role writes for its systemd helper and the client environment it writes
for clients. Every problem is reported at once, before the role's first change.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import (
    GpuopsError,
    argument_spec,
    check_options,
    invalid,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._gpu_info import mig_instances
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps import MpsDaemon, check_owner
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_devices import DaemonDevices
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_spec import (
    DAEMON_SPEC,
    MPS_SPEC,
    client_environment,
    validate,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession, mig_placement_selector

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

INSTANCE_SPEC = argument_spec(DAEMON_SPEC, {"name": {"type": "str", "required": True}})
INSTANCE_OPTIONS = sorted(INSTANCE_SPEC)

PLAN_SPEC = {
    "instances": {"type": "list", "elements": "dict", "default": []},
    "per_gpu": {"type": "bool", "default": False},
    "per_mig_device": {"type": "bool", "default": False},
    "defaults": {"type": "dict", "default": {}},
    "pipe_root": {"type": "path", "default": "/run/nvidia-mps"},
    "log_root": {"type": "path", "default": "/var/log/nvidia-mps"},
    "binary": {"type": "path", "default": "/usr/bin/nvidia-cuda-mps-control"},
    "timeout": {"type": "int", "default": 30},
    "config_dir": {"type": "path"},
    "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
    "inspect": {"type": "path"},
}
MANAGED = "# Managed by gpuops.nvidia (mps role, nvidia_mps_instances): changes here are overwritten.\n"
_DEFAULTABLE = sorted(set(DAEMON_SPEC) - {"devices", "device_filter"})


def plan(params, run, nvml_factory=NvmlSession, check_mode=False):
    """{"instances": [{name, config, devices, client_environment, running, restart_needed, drift, written}]}.

    With `config_dir`, also writes each instance's files (see write_files); otherwise changes nothing.
    Raises GpuopsError (kind invalid_argument or invalid_selection) listing every problem found.
    """
    params = check_options(PLAN_SPEC, params)
    problems, kinds = [], set()
    defaults = dict((k, v) for k, v in (params["defaults"] or {}).items() if v is not None)
    unknown = sorted(set(defaults) - set(_DEFAULTABLE))
    if unknown:
        raise invalid("defaults: unknown option(s) %s; valid: %s" % (", ".join(unknown), ", ".join(_DEFAULTABLE)))
    wanted = []
    for position, item in enumerate(params["instances"]):
        label = "mps instance %s" % (item.get("name") if isinstance(item, dict) and item.get("name") else
                                     "#%d" % (position + 1))
        try:
            checked = check_options(INSTANCE_SPEC, item, where=label)
        except GpuopsError as exc:
            problems.append(exc.message)
            kinds.add(exc.kind)
            continue
        # Only what the item sets overrides the defaults (the spec's own defaults would mask them).
        settings = dict((k, checked[k]) for k, v in item.items() if v is not None and k != "name")
        wanted.append((checked["name"], settings, "compute_mode" in settings))
    wanted.extend(_generated(params, nvml_factory))

    planned, by_pipe, by_device = [], {}, {}
    for name, settings, explicit_mode in wanted:
        where = "mps instance %s" % name
        if not NAME_PATTERN.match(name):
            problems.append("%s: the name must match %s (it names the systemd instance and the pipe and log "
                            "directories; '.' and '..' and names starting with '.' or '-' are refused)"
                            % (where, NAME_PATTERN.pattern))
            continue
        merged = dict(defaults)
        merged.update(settings)
        merged.update(state="started", binary=params["binary"], timeout=params["timeout"],
                      pipe_directory=os.path.join(params["pipe_root"], name),
                      log_directory=os.path.join(params["log_root"], name))
        try:
            config = validate(merged, MPS_SPEC, where=where)
            devices = DaemonDevices(dict(config, compute_mode="keep"), nvml_factory, True, [], []).resolve()
            if not explicit_mode and any(d["type"] == "mig" for d in devices):
                config["compute_mode"] = "keep"  # NVML refuses EXCLUSIVE_PROCESS on MIG; MIG daemons keep it
            if config["compute_mode"] != "keep":
                DaemonDevices(config, nvml_factory, True, [], []).resolve()  # refuses compute modes NVML would
            check_owner(config.get("user"), config.get("group"))
        except GpuopsError as exc:
            problems.append(exc.message if exc.message.startswith(where) else "%s: %s" % (where, exc.message))
            kinds.add(exc.kind)
            continue
        pipe = config["pipe_directory"]
        if pipe in by_pipe:
            problems.append("%s and mps instance %s use the same pipe directory %s: names must differ"
                            % (where, by_pipe[pipe], pipe))
            continue
        by_pipe[pipe] = name
        clash = [(d["uuid"], by_device[d["uuid"]]) for d in devices if d["uuid"] in by_device]
        if clash or (not devices and by_device) or ("*" in by_device):
            other = clash[0][1] if clash else (by_device.get("*") or sorted(set(by_device.values()))[0])
            problems.append("%s and mps instance %s serve the same device%s: one MPS control daemon per device"
                            % (where, other, " " + clash[0][0] if clash else " (one of them serves every GPU)"))
            continue
        for device in devices or [{"uuid": "*"}]:
            by_device[device["uuid"]] = name
        planned.append((name, config, devices))
    if problems:
        kinds.update(["invalid_argument"] if len(kinds) < len(problems) else [])
        raise GpuopsError("; ".join(problems) + " (nothing was changed)",
                          kind=kinds.pop() if len(kinds) == 1 else "invalid_argument")

    instances = []
    for name, config, devices in planned:
        daemon = MpsDaemon(config, run, binary=config["binary"] if os.access(config["binary"], os.X_OK) else None,
                           check_mode=True, nvml_factory=nvml_factory)
        running = daemon.control is not None and daemon.control.is_running()
        drift = daemon.start_drift(devices) if running else []
        instances.append({"name": name, "config": config, "devices": devices,
                          "client_environment": client_environment(config, devices),
                          "running": running, "restart_needed": bool(drift), "drift": drift, "written": []})
    result = {"changed": False, "instances": instances}
    if params["config_dir"] or params["inspect"]:
        units = unit_states(run, [i["name"] for i in instances])
        for instance in instances:
            instance["unit"] = units.get(instance["name"])
    if params["config_dir"]:
        diff = write_files(instances, params["config_dir"], params["unit_dir"], check_mode)
        result.update(changed=bool(diff), diff=diff)
    if params["inspect"]:
        result["inspected"] = inspect(instances, params["inspect"], run, nvml_factory)
    return result


def inspect(instances, config_dir, run, nvml_factory=NvmlSession):
    """What nvidia_mps in check mode says of every daemon: the planned ones, then those whose desired state is in
    `<config_dir>/daemon/` but not in the plan. One entry per daemon, shaped like a registered loop result of
    nvidia_mps: its result (or `failed`, `msg`, `error_kind`) and `item` = {name, in_inventory, config}."""
    entries = [(i["name"], True, i["config"]) for i in instances]
    planned = set(i["name"] for i in instances)
    daemon_dir = os.path.join(config_dir, "daemon")
    for filename in sorted(os.listdir(daemon_dir)) if os.path.isdir(daemon_dir) else []:
        name = filename[:-len(".json")]
        if not filename.endswith(".json") or name in planned:
            continue
        try:
            with open(os.path.join(daemon_dir, filename)) as handle:
                config = json.load(handle)
        except (IOError, OSError, ValueError) as exc:
            config = {"_unreadable": str(exc)}
        entries.append((name, False, config))
    inspected = []
    units = unit_states(run, [entry[0] for entry in entries])
    for name, in_inventory, config in entries:
        item = {"name": name, "in_inventory": in_inventory, "config": config, "unit": units.get(name)}
        try:
            if "_unreadable" in config:
                raise GpuopsError("cannot read its desired state: %s" % config["_unreadable"], kind="invalid_argument")
            settings = dict((k, v) for k, v in config.items() if not k.startswith("_"))
            settings["state"] = "started"
            binary = settings.get("binary")
            daemon = MpsDaemon(settings, run, binary=binary if binary and os.access(binary, os.X_OK) else None,
                               check_mode=True, nvml_factory=nvml_factory)
            found = daemon.apply()
            found.pop("diff", None)
            found["changed"] = False
        except GpuopsError as exc:
            found = dict(exc.payload(), failed=True)
        found["item"] = item
        inspected.append(found)
    return inspected


def unit_states(run, names):
    """{name: {state, active, enabled}} of the units gpuops-mps@<name>.service, from one `systemctl show`; {} where
    there is no systemd. `state` is service_facts' word: running, failed or stopped."""
    systemctl = next((path for path in ("/usr/bin/systemctl", "/bin/systemctl") if os.access(path, os.X_OK)), None)
    if not names or systemctl is None or not os.path.isdir("/run/systemd/system"):
        return {}
    rc, out, _err = run([systemctl, "show", "--property=Id,ActiveState,SubState,UnitFileState"]
                        + ["gpuops-mps@%s.service" % name for name in names])
    if rc != 0:
        return {}
    states = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        unit = props.get("Id", "")
        if not (unit.startswith("gpuops-mps@") and unit.endswith(".service")):
            continue
        active = props.get("ActiveState")
        states[unit[len("gpuops-mps@"):-len(".service")]] = {
            "state": "running" if props.get("SubState") == "running" else ("failed" if active == "failed" else "stopped"),
            "active": active == "active",
            "enabled": props.get("UnitFileState") == "enabled",
        }
    return states


def instance_files(instance, config_dir, unit_dir):
    """{what: (path, content)} of the files the systemd unit gpuops-mps@<name> reads: `settings` (the desired
    state its helper runs), `dropin` (User=, Group=) and `environment` (the client environment file)."""
    name, config = instance["name"], instance["config"]
    user = config.get("user") or "root"
    env_path = os.path.join(config_dir, name + ".env")
    environment = "".join("%s=%s\n" % item for item in sorted(instance["client_environment"].items()))
    return {
        "settings": (os.path.join(config_dir, "daemon", name + ".json"),
                     json.dumps(config, indent=4, sort_keys=True) + "\n"),
        "dropin": (os.path.join(unit_dir, "gpuops-mps@%s.service.d" % name, "10-gpuops.conf"),
                   MANAGED + "[Service]\nUser=%s\nGroup=%s\n" % (user, config.get("group") or user)),
        "environment": (env_path, MANAGED + (
            "# Client environment of MPS instance %s, exactly as the nvidia_mps engine computes it: source it in\n"
            "# Slurm jobs, notebooks or containers (`set -a; . %s; set +a`). CUDA_VISIBLE_DEVICES names the\n"
            "# daemon's devices (brought up to date at every start of the daemon): without it a client sees every\n"
            "# GPU of the node and CUDA fails when the daemon serves fewer.\n" % (name, env_path)) + environment),
    }


def write_files(instances, config_dir, unit_dir, check_mode):
    """Write the files of every instance whose content differs (atomically, root-owned, 0644; directories
    0755); records what changed in each instance's `written`. Returns the diff (one entry per file changed)."""
    diff = []
    for instance in instances:
        for what, (path, content) in sorted(instance_files(instance, config_dir, unit_dir).items()):
            try:
                with open(path) as handle:
                    before = handle.read()
            except (IOError, OSError):
                before = None
            if before == content:
                continue
            instance["written"].append(what)
            diff.append({"before_header": path, "after_header": path, "before": before or "", "after": content})
            if check_mode:
                continue
            directory = os.path.dirname(path)
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o755)
            tmp = path + ".gpuops-tmp"
            with open(tmp, "w") as handle:
                handle.write(content)
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)
    return diff


def _generated(params, nvml_factory):
    """(name, settings, explicit compute mode) for one daemon per GPU / per MIG device."""
    if not (params["per_gpu"] or params["per_mig_device"]):
        return []
    generated = []
    with nvml_factory() as nvml:
        for gpu in nvml.gpus():
            mode = nvml.mig_mode(gpu)
            if mode and mode[0]:
                if params["per_mig_device"]:
                    generated.extend(_per_mig_device(nvml, gpu))
            elif params["per_gpu"]:
                generated.append((gpu.uuid, {"devices": [gpu.uuid]}, False))
    return generated


def _per_mig_device(nvml, gpu):
    """One daemon per MIG device of a GPU, named and selected by where the device sits, not by its MIG UUID.

    A MIG UUID is new each time the instance is created, so a reboot (gpuops-mig-apply recreates the layout)
    would leave a UUID-named daemon serving a device that no longer exists. The name says GPU index, memory
    slice and profile (`gpu0-slice4-2g.20gb`, `-ci<start>` added when the GPU instance has several compute
    instances); the selector (`mig:<GPU UUID>:<GI start>:<CI start>`) is resolved to the current MIG UUID at every
    start of the daemon.
    """
    generated = []
    for gi in mig_instances(nvml, gpu):
        several = len(gi["compute_instances"]) > 1
        for ci in gi["compute_instances"]:
            profile = re.sub(r"[^A-Za-z0-9_.-]", "-", gi["profile"])
            name = "gpu%d-slice%d-%s" % (gpu.index, gi["placement"]["start"], profile)
            if several:
                name += "-ci%d" % ci["placement"]["start"]
            selector = mig_placement_selector(gpu.uuid, gi["placement"]["start"], ci["placement"]["start"])
            generated.append((name, {"devices": [selector], "compute_mode": "keep"}, True))
    return generated
