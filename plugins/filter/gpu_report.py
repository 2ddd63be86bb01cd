# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The GPU report: per-node model, text table, HTML page and Markdown. Plain Python, standard library only.

playbooks/gpu_report.yml (and the summary at the end of playbooks/site.yml) gathers on each node what the
collection's modules report - nvidia_gpu_info, nvidia_mig in check mode with the inventory's MIG settings,
nvidia_mps_instances with the inventory's MPS settings, nvidia_mps in check mode for every daemon, systemd's
view of the units, nvshare's desired state - and hands it with the inventory's desired state to
``gpu_report_node``, which compares the two and returns one node model. ``gpu_report_table`` turns a model
into the lines of the play output; ``gpu_report_html`` and ``gpu_report_markdown`` turn the models of a fleet
into a self-contained page and a Markdown file. Everything here is deterministic: the same input gives the same
output (the generation time is an argument).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import html
import os
import re

COMPUTE_MODES = {"default": "Default", "exclusive_process": "E. Process", "exclusive_thread": "E. Thread",
                 "prohibited": "Prohibited"}
_BUS_FULL = re.compile(r"^([0-9a-fA-F]{1,8}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.([0-7]))?$")
_BUS_SHORT = re.compile(r"^([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")
_PROFILE_SLICES = re.compile(r"(?:^|\.)(\d+)g\.")
MPS_UNIT = "gpuops-mps@%s.service"
NVSHARE_UNIT = "nvshare-scheduler@%s.service"


# -- small helpers ------------------------------------------------------------------------------------------

def _result(value):
    """A registered module result, or None when the task was skipped or nothing was registered."""
    if not isinstance(value, dict) or value.get("skipped"):
        return None
    return value


def _failed(result):
    """A failed module run, also when the task ignored it (failed_when: false keeps the collection's failure
    payload, `msg` and `error_kind`, but sets failed to false)."""
    return bool(result and (result.get("failed") or result.get("unreachable") or result.get("error_kind")))


def _loop_results(value):
    """The items of a registered loop (or a plain list of results)."""
    if isinstance(value, dict):
        value = value.get("results", [])
    return [item for item in (value or []) if isinstance(item, dict) and not item.get("skipped")]


def short_uuid(uuid):
    """`MIG-3c7a0a6e-2c4b-...` -> `MIG-3c7a0a6e` (what fits in a table cell; the full UUID goes elsewhere)."""
    uuid = str(uuid or "")
    prefix, _sep, rest = uuid.partition("-")
    if prefix in ("GPU", "MIG") and rest:
        return "%s-%s" % (prefix, rest.split("-")[0])
    return uuid


def short_model(name):
    name = str(name or "?")
    return name[7:] if name.startswith("NVIDIA ") else name


def compute_mode_label(mode):
    if mode is None:
        return "n/a"
    return COMPUTE_MODES.get(mode, str(mode))


def _norm_bus(value):
    value = str(value).strip()
    full, short = _BUS_FULL.match(value), _BUS_SHORT.match(value)
    if full:
        parts = (full.group(1), full.group(2), full.group(3), full.group(4) or "0")
    elif short:
        parts = ("0", short.group(1), short.group(2), short.group(3))
    else:
        return None
    return tuple(int(part, 16) for part in parts)


def _plural(count, word, plural=None):
    return "%d %s" % (count, word if count == 1 else (plural or word + "s"))


def _join_indices(indices):
    """[0, 1, 2, 5] -> `0-2, 5`."""
    indices = sorted(set(indices))
    runs, start = [], None
    for position, value in enumerate(indices):
        if start is None:
            start = value
        if position + 1 == len(indices) or indices[position + 1] != value + 1:
            runs.append(str(start) if start == value else "%d-%d" % (start, value))
            start = None
    return ", ".join(runs)


def slices_label(start, size):
    return str(start) if size == 1 else "%d-%d" % (start, start + size - 1)


def layout_label(devices):
    """{"3g.40gb": 1, "1g.10gb": 2} -> `3g.40gb + 2x 1g.10gb` (largest profile first)."""
    if not devices:
        return "no MIG devices"

    def weight(item):
        match = _PROFILE_SLICES.search(item[0])
        return (-(int(match.group(1)) if match else 0), item[0])
    parts = []
    for profile, count in sorted(devices.items(), key=weight):
        parts.append(profile if count == 1 else "%dx %s" % (count, profile))
    return " + ".join(parts)


def limits_label(limits):
    """The MPS defaults of a daemon as `50% SM, 20G/device, priority 1`; `-` when none is set."""
    if not limits:
        return "none"
    parts = []
    threads = limits.get("active_thread_percentage")
    if threads is not None and float(threads) < 100:  # 100: every SM, the daemon's own default
        parts.append("%s%% SM" % (int(threads) if float(threads).is_integer() else threads))
    pinned = limits.get("device_pinned_mem_limit") or {}
    if pinned:
        values = sorted(set(str(v) for v in pinned.values()))
        if len(values) == 1:
            parts.append("%s/device" % values[0] if len(pinned) > 1 else "%s pinned" % values[0])
        else:
            parts.append(", ".join("dev %s %s" % (k, pinned[k]) for k in sorted(pinned, key=str)))
    priority = limits.get("client_priority")
    if priority not in (None, 0):
        parts.append("priority %s" % priority)
    return ", ".join(parts) or "none"


# -- device selection (the collection's one selector, evaluated on gathered facts) ------------------------

def _selected(gpus, devices, device_filter):
    """GPU indices a selector picks: `all` or [index | GPU-/MIG- UUID | PCI bus id], and PCI device ids.

    Returns (indices, unresolved items). A MIG UUID selects its GPU."""
    if devices is None or devices == "all" or (isinstance(devices, (list, tuple)) and list(devices) == ["all"]):
        chosen = [g["index"] for g in gpus]
        unresolved = []
    else:
        if not isinstance(devices, (list, tuple)):
            devices = [devices]
        chosen, unresolved = [], []
        for item in devices:
            found = _find_gpu(gpus, item)
            if found is None:
                unresolved.append(str(item))
            else:
                chosen.append(found)
    if device_filter:
        wanted = set(str(v).upper() for v in ([device_filter] if isinstance(device_filter, str) else device_filter))
        chosen = [i for i in chosen if str(_by_index(gpus, i).get("pci_device_id", "")).upper() in wanted]
    return sorted(set(chosen)), unresolved


def _by_index(gpus, index):
    for gpu in gpus:
        if gpu["index"] == index:
            return gpu
    return {}


def _find_gpu(gpus, item):
    text = str(item).strip()
    if re.match(r"^\d+$", text):
        index = int(text)
        return index if any(g["index"] == index for g in gpus) else None
    for gpu in gpus:
        if text == gpu.get("uuid"):
            return gpu["index"]
        for gi in (gpu.get("mig") or {}).get("gpu_instances") or []:
            for ci in gi.get("compute_instances") or []:
                if text == ci.get("uuid"):
                    return gpu["index"]
    bus = _norm_bus(text)
    if bus is not None:
        for gpu in gpus:
            if _norm_bus(gpu.get("pci_bus_id", "")) == bus:
                return gpu["index"]
    return None


# -- MIG slice map ------------------------------------------------------------------------------------------

def _memory_slices(mig):
    ends = [p["start"] + p["size"] for prof in mig.get("profiles") or [] for p in prof.get("placements") or []]
    if ends:
        return max(ends)
    ends = [gi["placement"]["start"] + gi["placement"]["size"] for gi in mig.get("gpu_instances") or []]
    return max(ends + [8]) if ends else 0


def _compute_slices(mig):
    slices = [prof.get("slices") or 0 for prof in mig.get("profiles") or []]
    return max(slices) if slices else None


def slice_segments(gpu):
    """The memory slices of a GPU in MIG mode, left to right: each GPU instance and each run of free slices.

    A free run says which GPU-instance profiles could still be created there (`fits`), from the profiles'
    placements; a run no profile can use (on an H100 with 3g+2g+1g, the 8th memory slice: there are 8 memory
    slices but 7 compute slices) is `unusable`."""
    mig = gpu.get("mig") or {}
    total = _memory_slices(mig)
    segments, used = [], set()
    for gi in sorted(mig.get("gpu_instances") or [], key=lambda g: g["placement"]["start"]):
        start, size = gi["placement"]["start"], gi["placement"]["size"]
        cis = gi.get("compute_instances") or []
        label = gi["profile"]
        sizes = [ci.get("slices") or 0 for ci in cis]
        if not cis:
            label += " (no CI)"
        elif not (len(cis) == 1 and cis[0].get("profile") == gi["profile"]):
            label += " " + "+".join("%dx%dc" % (sizes.count(s), s) for s in sorted(set(sizes), reverse=True))
        segments.append({"kind": "gi", "start": start, "size": size, "profile": gi["profile"], "label": label,
                         "slices": slices_label(start, size),
                         "devices": [{"uuid": ci.get("uuid"), "profile": ci.get("profile")} for ci in cis]})
        used.update(range(start, start + size))
    position = 0
    free = []
    while position < total:
        if position in used:
            position += 1
            continue
        start = position
        while position < total and position not in used:
            position += 1
        free.append((start, position - start))
    for start, size in free:
        run = set(range(start, start + size))
        fits = []
        for prof in mig.get("profiles") or []:
            if any(set(range(p["start"], p["start"] + p["size"])) <= run for p in prof.get("placements") or []):
                fits.append(prof["name"])
        known = bool(mig.get("profiles"))
        kind = "free" if fits or not known else "unusable"
        if kind == "unusable":
            why = "no MIG profile fits on memory slice%s %s" % ("" if size == 1 else "s", slices_label(start, size))
            compute = _compute_slices(mig)
            if compute and compute < total:
                why += " (the %s has %d memory slices but %d compute slices)" % (
                    short_model(gpu.get("name")), total, compute)
            label = "unusable"
        else:
            why = ("free: room for %s" % ", ".join(fits)) if fits else "free"
            label = "free"
        segments.append({"kind": kind, "start": start, "size": size, "label": label,
                         "slices": slices_label(start, size), "fits": fits, "why": why, "devices": []})
    segments.sort(key=lambda s: s["start"])
    return {"memory_slices": total, "segments": segments}


# -- what the inventory asks ----------------------------------------------------------------------------------

def _devices_text(devices, device_filter=None):
    if devices is None or devices == "all" or (isinstance(devices, (list, tuple)) and list(devices) == ["all"]):
        text = "all GPUs"
    else:
        items = devices if isinstance(devices, (list, tuple)) else [devices]
        if all(re.match(r"^\d+$", str(i)) for i in items):
            text = ("GPU " if len(items) == 1 else "GPUs ") + _join_indices([int(i) for i in items])
        else:
            text = "devices " + ", ".join(str(i) for i in items)
    if device_filter:
        text += " with PCI id %s" % ", ".join([device_filter] if isinstance(device_filter, str) else device_filter)
    return text


def asked(desired):
    """What the inventory asks of a node, one line per part, in site.yml's order."""
    desired = desired or {}
    lines = []
    driver = desired.get("driver") or {}
    if driver.get("enabled"):
        what = "driver: install"
        what += " %s" % driver["version"] if driver.get("version") else (
            " branch %s" % driver["branch"] if driver.get("branch") else " the distribution's branch")
        what += " from %s" % ("NVIDIA's CUDA repository" if driver.get("source") == "cuda" else "the distribution")
        lines.append(what)
    else:
        lines.append("driver: not managed (treated as installed)")
    persistence = desired.get("persistence") or {}
    if persistence.get("enabled"):
        lines.append("persistence mode %s for %s (nvidia-persistenced)" % (
            "on" if persistence.get("mode", True) else "off",
            _devices_text(persistence.get("devices"), persistence.get("device_filter"))))
    else:
        lines.append("persistence mode: not managed")
    mig = desired.get("mig") or {}
    if mig.get("enabled"):
        where = _devices_text(mig.get("devices"), mig.get("device_filter"))
        if mig.get("config_file"):
            lines.append("MIG: mig-parted config %s from %s on %s" % (
                mig.get("config_name") or "(the only one)", mig["config_file"], where))
        elif mig.get("layout"):
            lines.append("MIG: %s -> %s" % (where, layout_label(mig["layout"])))
        else:
            lines.append("MIG: %s on %s" % (mig.get("mode") or "enabled", where))
    else:
        lines.append("MIG: not managed")
    mps = desired.get("mps") or {}
    if mps.get("enabled"):
        defaults = mps.get("defaults") or {}
        common = limits_label({"active_thread_percentage": defaults.get("default_active_thread_percentage"),
                               "device_pinned_mem_limit": defaults.get("default_device_pinned_mem_limit"),
                               "client_priority": defaults.get("default_client_priority")})
        tail = "" if common == "none" else " (%s)" % common
        if mps.get("per_mig_device"):
            lines.append("MPS: one daemon per MIG device%s" % tail)
        if mps.get("per_gpu"):
            lines.append("MPS: one daemon per whole GPU%s" % tail)
        for item in mps.get("instances") or []:
            limits = limits_label({"active_thread_percentage": item.get("default_active_thread_percentage",
                                                                        defaults.get("default_active_thread_percentage")),
                                   "device_pinned_mem_limit": item.get("default_device_pinned_mem_limit",
                                                                       defaults.get("default_device_pinned_mem_limit")),
                                   "client_priority": item.get("default_client_priority",
                                                               defaults.get("default_client_priority"))})
            where = _devices_text(item.get("devices"), item.get("device_filter"))
            extra = "" if limits == "none" else ", " + limits
            lines.append("MPS: daemon %s on %s%s" % (item.get("name"), where, extra))
    else:
        lines.append("MPS: not managed")
    nvshare = desired.get("nvshare") or {}
    if nvshare.get("enabled") and nvshare.get("state", "present") == "present":
        clients = [c.get("service") for c in nvshare.get("clients") or [] if isinstance(c, dict)]
        lines.append("nvshare: a scheduler on %s, TQ %ss%s" % (
            _devices_text(nvshare.get("devices"), nvshare.get("device_filter")), nvshare.get("tq", 30),
            ", clients " + ", ".join(clients) if clients else ""))
    elif nvshare.get("enabled"):
        lines.append("nvshare: removed")
    else:
        lines.append("nvshare: not managed")
    return lines


# -- the node model -----------------------------------------------------------------------------------------

def _gpu_row(gpu):
    mig = gpu.get("mig") or {}
    row = {
        "index": gpu["index"], "uuid": gpu.get("uuid"), "name": gpu.get("name"), "model": short_model(gpu.get("name")),
        "pci_bus_id": gpu.get("pci_bus_id"), "memory_mib": gpu.get("memory_total_mib"),
        "persistence": gpu.get("persistence_mode"), "compute_mode": gpu.get("compute_mode"),
        "compute_mode_label": compute_mode_label(gpu.get("compute_mode")),
        "mig": {"capable": bool(mig.get("capable")), "current": mig.get("current"), "pending": mig.get("pending")},
        "mig_devices": [], "segments": [], "memory_slices": 0, "daemons": [], "nvshare": None,
        "processes": [{"pid": p.get("pid"), "name": p.get("name"),
                       "memory_mib": (p.get("used_gpu_memory") or 0) // (1024 * 1024),
                       "gpu_instance_id": p.get("gpu_instance_id"), "compute_instance_id": p.get("compute_instance_id")}
                      for p in gpu.get("processes") or []],
        "desired": {}, "drift": [], "differs": [],
    }
    if mig.get("current") == "enabled":
        slicing = slice_segments(gpu)
        row["segments"] = slicing["segments"]
        row["memory_slices"] = slicing["memory_slices"]
        for gi in sorted(mig.get("gpu_instances") or [], key=lambda g: g["placement"]["start"]):
            for ci in gi.get("compute_instances") or []:
                row["mig_devices"].append({
                    "uuid": ci.get("uuid"), "profile": ci.get("profile"), "gpu_instance": gi["profile"],
                    "gpu_instance_id": gi.get("id"), "compute_instance_id": ci.get("id"),
                    "slices": slices_label(gi["placement"]["start"], gi["placement"]["size"]),
                    "daemon": None, "processes": [p for p in row["processes"]
                                                  if p["gpu_instance_id"] == gi.get("id")
                                                  and p["compute_instance_id"] == ci.get("id")]})
    return row


def _mig_word(row):
    mig = row["mig"]
    if not mig["capable"]:
        return "n/a"
    word = {"enabled": "on", "disabled": "off"}.get(mig["current"], str(mig["current"]))
    if mig["pending"] and mig["pending"] != mig["current"]:
        word += "->" + {"enabled": "on", "disabled": "off"}.get(mig["pending"], str(mig["pending"]))
    return word


def _service_state(services, unit):
    entry = (services or {}).get(unit)
    if not isinstance(entry, dict):
        return None
    return entry.get("state")


def _clients(servers, processes):
    names = dict((p["pid"], p["name"]) for p in processes)
    clients = []
    for server in servers or []:
        for pid in server.get("clients") or []:
            clients.append({"pid": pid, "name": names.get(pid), "server": server.get("pid")})
    return clients


def _mps_origin(name, named):
    if name in named:
        return "named"
    if name.startswith("MIG-") or re.match(r"^gpu[0-9]+-slice[0-9]+-", name):
        return "per MIG device"
    if name.startswith("GPU-"):
        return "per GPU"
    return "named"


def _describe_device(device, rows):
    """One served device as `GPU 0 3g.40gb (slices 0-3)` or `GPU 6`."""
    if device.get("type") == "mig" or str(device.get("uuid", "")).startswith("MIG-"):
        for row in rows:
            for dev in row["mig_devices"]:
                if dev["uuid"] == device.get("uuid"):
                    return {"uuid": dev["uuid"], "type": "mig", "gpu": row["index"], "profile": dev["profile"],
                            "slices": dev["slices"],
                            "label": "GPU %d %s (slices %s)" % (row["index"], dev["profile"], dev["slices"])}
        parent = device.get("parent_index")
        return {"uuid": device.get("uuid"), "type": "mig", "gpu": parent, "profile": None, "slices": None,
                "label": "%sMIG device %s (gone)" % ("GPU %s " % parent if parent is not None else "",
                                                     short_uuid(device.get("uuid")))}
    index = device.get("index")
    if index is None:
        for row in rows:
            if row["uuid"] == device.get("uuid"):
                index = row["index"]
    return {"uuid": device.get("uuid"), "type": "gpu", "gpu": index, "profile": None, "slices": None,
            "label": "GPU %s" % index if index is not None else "GPU %s" % short_uuid(device.get("uuid"))}


def _daemon_devices(config, check, planned, rows, gpus):
    """The devices a daemon serves, from the most precise source at hand."""
    for source in (planned or {}).get("devices"), (check or {}).get("devices"):
        if source:
            return [_describe_device(d, rows) for d in source]
    devices = (config or {}).get("devices")
    if devices in (None, "all", ["all"]) and not (config or {}).get("device_filter"):
        return []
    described = []
    for item in devices if isinstance(devices, list) else [devices]:
        text = str(item)
        if text.startswith("MIG-"):
            described.append(_describe_device({"uuid": text, "type": "mig"}, rows))
            continue
        index = _find_gpu(gpus, text)
        described.append(_describe_device({"uuid": _by_index(gpus, index).get("uuid", text), "type": "gpu",
                                           "index": index}, rows))
    return described


def _serves_label(devices):
    if not devices:
        return "every GPU"
    if all(d["type"] == "gpu" for d in devices):
        known = [d["gpu"] for d in devices if d["gpu"] is not None]
        return ("GPU " if len(known) == 1 else "GPUs ") + _join_indices(known) if known else \
            ", ".join(d["label"] for d in devices)
    return "; ".join(d["label"] for d in devices)


def _desired_limits(config):
    config = config or {}
    return {"active_thread_percentage": config.get("default_active_thread_percentage"),
            "device_pinned_mem_limit": config.get("default_device_pinned_mem_limit"),
            "client_priority": config.get("default_client_priority")}


def _mps_daemons(found, desired, rows, gpus, node_drift):
    mps_desired = (desired or {}).get("mps") or {}
    enabled = bool(mps_desired.get("enabled"))
    named = set(str(i.get("name")) for i in mps_desired.get("instances") or [] if isinstance(i, dict))
    plan = _result(found.get("mps_plan"))
    planned = {}
    if enabled and plan is not None:
        if _failed(plan):
            node_drift.append({"where": "MPS", "what": "not compared, nvidia_mps_instances refused the inventory's "
                               "settings: %s" % (plan.get("msg") or "unknown error")})
        else:
            for instance in plan.get("instances") or []:
                planned[instance["name"]] = instance
    checks = {}
    for item in _loop_results(found.get("mps_checks")):
        name = (item.get("item") or {}).get("name") if isinstance(item.get("item"), dict) else None
        if name:
            checks[name] = item
    configs = dict(found.get("mps_configs") or {})
    on_node = set(found.get("mps_found") or []) | set(configs) | set(checks)
    files = _result(found.get("mps_files"))
    if files is not None:
        on_node.update(os.path.splitext(os.path.basename(f.get("path", "")))[0] for f in files.get("files") or [])
    services = found.get("services") or {}
    processes = [p for row in rows for p in row["processes"]]
    names = list(planned) + sorted(on_node - set(planned))
    daemons = []
    for name in names:
        instance = planned.get(name)
        check = checks.get(name)
        config = (instance or {}).get("config") or configs.get(name) or ((check or {}).get("item") or {}).get("config")
        unit = _service_state(services, MPS_UNIT % name)
        if unit is None and check is not None and isinstance((check.get("item") or {}).get("unit"), dict):
            unit = check["item"]["unit"].get("state")  # nvidia_mps_instances' inspect read the unit
        drift = []
        running = None
        pid = None
        servers = []
        live = None
        actions = []
        if check is not None and not _failed(check):
            pid = check.get("pid")
            running = pid is not None
            servers = check.get("servers") or []
            live = check.get("defaults") if running else None
            actions = [a for a in check.get("actions") or [] if not a.startswith("start the MPS control daemon")
                       and not a.startswith("create ")]
        unchecked = None
        if check is not None and _failed(check):
            unchecked = "cannot be checked: %s" % (check.get("msg") or "unknown error")
        if running is None:
            running = unit == "running" if unit is not None else bool((instance or {}).get("running"))
        devices = _daemon_devices(config, check, instance, rows, gpus)
        if instance is not None:
            if not running:
                drift.append("not running%s" % (" (unit %s)" % unit if unit and unit != "running" else ""))
            elif instance.get("restart_needed"):
                drift.append("runs with other %s than the inventory asks: a restart applies them"
                             % ", ".join(instance.get("drift") or ["start-time settings"]))
            if running:
                drift.extend(actions)
        elif running or unit == "running":
            drift.append("runs but the inventory has %s" % ("no such MPS daemon" if enabled else "MPS off"))
        if unchecked:
            drift.append(unchecked)
        limits_desired = _desired_limits(config)
        daemon = {
            "name": name, "short": short_uuid(name), "origin": _mps_origin(name, named),
            "in_inventory": instance is not None, "unit": unit, "running": bool(running), "pid": pid,
            "devices": devices, "serves": _serves_label(devices),
            "pipe_directory": (config or {}).get("pipe_directory"),
            "limits": live if live else limits_desired, "limits_label": limits_label(live if live else limits_desired),
            "servers": servers, "clients": _clients(servers, processes), "drift": drift,
        }
        daemons.append(daemon)
        for device in devices or [{"type": "gpu", "gpu": row["index"]} for row in rows]:
            for row in rows:
                if row["index"] != device["gpu"]:
                    continue
                if device["type"] == "mig":
                    for dev in row["mig_devices"]:
                        if dev["uuid"] == device["uuid"]:
                            dev["daemon"] = name
                elif name not in row["daemons"]:
                    row["daemons"].append(name)
                for what in drift:
                    gpu_of = re.search(r"compute mode of GPU (\d+)", what)
                    if gpu_of and int(gpu_of.group(1)) != row["index"]:
                        continue  # the engine names the GPU whose compute mode differs
                    row["drift"].append("MPS %s: %s" % (daemon["short"], what))
                    if gpu_of:
                        row["differs"].append("compute_mode")
                    else:
                        row["differs"].append("mps")
                if instance is not None:
                    row["desired"]["mps"] = True
    return daemons


def _daemon_order(daemon):
    """Daemons serving every GPU first, then by GPU index and memory slice of what they serve."""
    if not daemon["devices"]:
        return (-1, 0, daemon["name"])
    first = daemon["devices"][0]
    start = int(str(first.get("slices") or "0").split("-", 1)[0])
    return (first["gpu"] if first["gpu"] is not None else 999, start, daemon["name"])


def _persistence(desired, rows, gpus, node_drift):
    persistence = (desired or {}).get("persistence") or {}
    if not persistence.get("enabled"):
        return
    want = bool(persistence.get("mode", True))
    chosen, unresolved = _selected(gpus, persistence.get("devices"), persistence.get("device_filter"))
    for item in unresolved:
        node_drift.append({"where": "persistence", "what": "device %s of the inventory is not on the node" % item})
    for row in rows:
        if row["index"] not in chosen:
            continue
        row["desired"]["persistence"] = want
        if row["persistence"] is not None and bool(row["persistence"]) != want:
            row["drift"].append("persistence mode %s, the inventory wants %s"
                                % ("on" if row["persistence"] else "off", "on" if want else "off"))
            row["differs"].append("persistence")


def _mig(found, desired, rows, node_drift):
    mig = (desired or {}).get("mig") or {}
    if not mig.get("enabled"):
        return
    check = _result(found.get("mig_check"))
    if check is None:
        return
    if _failed(check):
        node_drift.append({"where": "MIG", "what": "not compared, nvidia_mig's check with the inventory's settings "
                           "failed: %s" % (check.get("msg") or "unknown error")})
        return
    by_index = dict((row["index"], row) for row in rows)
    for gpu in check.get("gpus") or []:
        row = by_index.get(gpu.get("index"))
        if row is None:
            continue
        before, after = gpu.get("before") or {}, gpu.get("after") or {}
        row["desired"]["mig"] = after.get("mig_mode")
        row["desired"]["layout"] = after.get("devices") or {}
        if gpu.get("changed"):
            if before.get("mig_mode") != after.get("mig_mode"):
                row["drift"].append("MIG %s, the inventory wants MIG %s%s" % (
                    before.get("mig_mode"), after.get("mig_mode"),
                    " with " + layout_label(after.get("devices")) if after.get("devices") else ""))
            else:
                row["drift"].append("MIG devices %s, the inventory wants %s" % (
                    layout_label(before.get("devices")), layout_label(after.get("devices"))))
            row["differs"].append("mig")
        if gpu.get("reset_required") or gpu.get("reboot_required") or (
                before.get("mig_mode_pending") and before.get("mig_mode_pending") != before.get("mig_mode")):
            row["drift"].append("MIG mode change waits for a %s" % ("reboot" if gpu.get("reboot_required")
                                                                    else "GPU reset"))
            row["differs"].append("mig")


def _nvshare(found, desired, rows, gpus, node_drift):
    nvshare = (desired or {}).get("nvshare") or {}
    services = found.get("services") or {}
    config = found.get("nvshare_config") or None
    wanted = []
    if nvshare.get("enabled") and nvshare.get("state", "present") == "present":
        wanted, unresolved = _selected(gpus, nvshare.get("devices"), nvshare.get("device_filter"))
        for item in unresolved:
            node_drift.append({"where": "nvshare", "what": "device %s of the inventory is not on the node" % item})
        if config and nvshare.get("tq") is not None and config.get("tq") is not None \
                and int(config["tq"]) != int(nvshare["tq"]):
            node_drift.append({"where": "nvshare", "what": "TQ on the node %ss, the inventory wants %ss"
                               % (config["tq"], nvshare["tq"])})
    tq = (config or {}).get("tq", nvshare.get("tq") if wanted else None)
    for row in rows:
        state = _service_state(services, NVSHARE_UNIT % row["uuid"])
        if row["index"] in wanted:
            row["desired"]["nvshare"] = True
        if state is None and row["index"] not in wanted:
            continue
        row["nvshare"] = {"state": state or "absent", "running": state == "running", "tq": tq,
                          "unit": NVSHARE_UNIT % row["uuid"]}
        if row["index"] in wanted and state != "running":
            row["drift"].append("nvshare scheduler %s" % ("not installed" if state is None else state))
            row["differs"].append("nvshare")
        elif row["index"] not in wanted and state == "running":
            row["drift"].append("an nvshare scheduler runs, the inventory has none for this GPU")
            row["differs"].append("nvshare")
    clients = [c.get("service") for c in (config or {}).get("clients") or [] if isinstance(c, dict)]
    return {"config_tq": (config or {}).get("tq"), "clients": clients} if config or wanted else None


def _driver(desired, driver, node_drift):
    want = (desired or {}).get("driver") or {}
    version = str((driver or {}).get("version") or "")
    if not want.get("enabled") or not version:
        return
    if want.get("version") and version != str(want["version"]):
        node_drift.append({"where": "driver", "what": "driver %s, the inventory wants %s" % (version, want["version"])})
    elif want.get("branch") and version.split(".", 1)[0] != str(want["branch"]):
        node_drift.append({"where": "driver", "what": "driver %s, the inventory wants branch %s"
                           % (version, want["branch"])})


def node_model(found, desired=None, host=None, groups=None, simulated=False, note=None):
    """One node of the report: its GPUs, MIG slices, MPS daemons, nvshare schedulers and the drift from
    `desired` (the inventory's settings, see playbooks/tasks/gpu_report_gather.yml for both shapes)."""
    found = found or {}
    desired = desired or {}
    info = _result(found.get("gpu_info"))
    node = {"host": host or found.get("host") or "?", "groups": sorted(groups or []), "simulated": bool(simulated),
            "note": note, "asked": asked(desired), "driver": {}, "gpus": [], "mps": [], "nvshare": None,
            "drift": [], "errors": [], "status": "ok", "summary": ""}
    if info is None or _failed(info) or info.get("unavailable_reason"):
        node["status"] = "unavailable"
        node["errors"].append((info or {}).get("msg") or (info or {}).get("unavailable_reason")
                              or "no GPU facts were gathered")
        node["summary"] = "no GPU facts: " + node["errors"][0]
        return node
    gpus = sorted(info.get("gpus") or [], key=lambda g: g["index"])
    node["driver"] = dict(info.get("driver") or {})
    rows = [_gpu_row(g) for g in gpus]
    node_drift = []
    _driver(desired, node["driver"], node_drift)
    _persistence(desired, rows, gpus, node_drift)
    _mig(found, desired, rows, node_drift)
    node["mps"] = sorted(_mps_daemons(found, desired, rows, gpus, node_drift), key=_daemon_order)
    node["nvshare"] = _nvshare(found, desired, rows, gpus, node_drift)
    for row in rows:
        row["differs"] = sorted(set(row["differs"]))
    node["gpus"] = rows
    drift = list(node_drift)
    for row in rows:
        drift.extend({"where": "GPU %d" % row["index"], "what": what} for what in row["drift"]
                     if not what.startswith("MPS "))
    for daemon in node["mps"]:
        where = "MPS %s (%s)" % (daemon["short"], daemon["serves"])
        drift.extend({"where": where, "what": what} for what in daemon["drift"])
    node["drift"] = drift
    node["status"] = "drift" if drift else "ok"
    models = {}
    for row in rows:
        models[row["name"]] = models.get(row["name"], 0) + 1
    node["models"] = ", ".join("%d x %s" % (count, name) for name, count in sorted(models.items()))
    node["summary"] = "%s, driver %s%s: %s" % (
        node["models"] or "no GPU", node["driver"].get("version", "?"),
        " (SIMULATED GPUs and driver)" if simulated else "",
        "in sync with the inventory" if not drift else "%s from the inventory" % _plural(len(drift), "difference"))
    return node


# -- text table ---------------------------------------------------------------------------------------------

def _mark(text, differs):
    return text + "*" if differs else text


def _daemon_cell(daemons, name, mig_uuid=None):
    daemon = next((d for d in daemons if d["name"] == name), None)
    if daemon is None:
        return "-", "-", "-"
    state = "up" if daemon["running"] else "DOWN"
    # A generated per-MIG-device daemon: its name only repeats the GPU, slices and profile already on the row.
    label = "per-device" if mig_uuid and daemon["origin"] == "per MIG device" else daemon["short"]
    clients = daemon["clients"]
    if clients:
        who = ", ".join("%s %s" % (c["name"] or "pid", c["pid"]) for c in clients[:2])
        more = " +%d" % (len(clients) - 2) if len(clients) > 2 else ""
        clients_text = "%d (%s%s)" % (len(clients), who, more)
    else:
        clients_text = "0"
    return "%s %s" % (label, state), daemon["limits_label"], clients_text


def table_rows(node):
    """The table as rows of cells (header first): one row per GPU, one more per further MIG device or
    free run of memory slices of a GPU in MIG mode."""
    header = ["GPU", "MODEL", "PERSIST", "COMPUTE", "MIG", "MIG DEVICE", "SLICES", "MPS DAEMON", "MPS LIMITS",
              "CLIENTS", "NVSHARE", "STATE"]
    rows = [header]
    for gpu in node["gpus"]:
        differs = set(gpu["differs"])
        persistence = "n/a" if gpu["persistence"] is None else ("on" if gpu["persistence"] else "off")
        nvshare = "-"
        if gpu["nvshare"]:
            nvshare = ("up TQ %ss" % gpu["nvshare"]["tq"]) if gpu["nvshare"]["running"] and gpu["nvshare"]["tq"] \
                else ("up" if gpu["nvshare"]["running"] else gpu["nvshare"]["state"].upper())
        first = [str(gpu["index"]), gpu["model"], _mark(persistence, "persistence" in differs),
                 _mark(gpu["compute_mode_label"], "compute_mode" in differs), _mark(_mig_word(gpu), "mig" in differs)]
        state = "DRIFT" if gpu["drift"] else "ok"
        lines = []
        if gpu["mig"]["current"] == "enabled":
            devices = dict((d["uuid"], d) for d in gpu["mig_devices"])
            for segment in gpu["segments"]:
                if segment["kind"] == "gi":
                    for dev in segment["devices"]:
                        info = devices.get(dev["uuid"], {})
                        daemon, limits, clients = _daemon_cell(node["mps"], info.get("daemon"), dev["uuid"])
                        lines.append(["%s %s" % (dev["profile"], short_uuid(dev["uuid"])), segment["slices"],
                                      daemon, limits, clients])
                else:
                    lines.append(["(%s)" % (segment["label"] if segment["kind"] == "free" and not segment["fits"]
                                            else "free: " + ", ".join(segment["fits"][:2]) if segment["fits"]
                                            else "unusable"), segment["slices"], "", "", ""])
            if not gpu["segments"]:
                lines.append(["(no MIG devices)", "", "", "", ""])
        else:
            if gpu["daemons"]:
                for name in gpu["daemons"]:
                    daemon, limits, clients = _daemon_cell(node["mps"], name)
                    lines.append(["-", "", daemon, limits, clients])
            else:
                lines.append(["-", "", "-", "-", "-"])
        for position, line in enumerate(lines):
            lead = first if position == 0 else [""] * 5
            tail = [nvshare, state] if position == 0 else ["", ""]
            rows.append(lead + line + tail)
    return rows


def _format_rows(rows):
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def text_table(node, text=False):
    """The lines the playbooks print for a node: a headline, what the inventory asks, the GPU table, the
    MPS daemons with what they serve, and every difference from the inventory. `text`: one string."""
    lines = _text_lines(node)
    return "\n".join(lines) if str(text).lower() in ("true", "yes", "1") else lines


def _text_lines(node):
    lines = ["%s: %s" % (node["host"], node["summary"])]
    if node["groups"]:
        lines.append("groups: %s" % ", ".join(node["groups"]))
    if node["note"]:
        lines.append(node["note"])
    if node["status"] == "unavailable":
        return lines
    lines.append("asked by the inventory:")
    lines.extend("  " + line for line in node["asked"])
    lines.append("")
    lines.extend(_format_rows(table_rows(node)))
    if any(gpu["differs"] for gpu in node["gpus"]):
        lines.append("(* differs from the inventory)")
    unusable = [s for gpu in node["gpus"] for s in gpu["segments"] if s["kind"] == "unusable"]
    if unusable:
        lines.append("(unusable: %s)" % unusable[0]["why"])
    lines.append("(MIG DEVICE: profile and MIG UUID; SLICES: memory slices; per-device: the MPS daemon of that "
                 "MIG device)" if any(g["mig_devices"] for g in node["gpus"]) else "")
    if not lines[-1]:
        lines.pop()
    if node["mps"]:
        lines.append("")
        lines.append("MPS daemons (systemctl status gpuops-mps@NAME; clients: . /etc/gpuops/mps/NAME.env):")
        rows = [["NAME", "SERVES", "STATE", "LIMITS", "CLIENTS"]]
        for daemon in node["mps"]:
            state = "running" if daemon["running"] else "DOWN"
            if not daemon["in_inventory"]:
                state += " (not in inventory)"
            rows.append([daemon["name"], daemon["serves"], state, daemon["limits_label"],
                         str(len(daemon["clients"]))])
        lines.extend("  " + line for line in _format_rows(rows))
    if node["drift"]:
        lines.append("")
        lines.append("DRIFT from the inventory:")
        lines.extend("  %s: %s" % (item["where"], item["what"]) for item in node["drift"])
    return lines


# -- HTML ---------------------------------------------------------------------------------------------------

_CSS = """
:root { --ok: #1b7f3b; --drift: #c0392b; --na: #7f8c8d; --ink: #1d2327; --muted: #5f6b73; --line: #d9dee2; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: var(--ink);
       margin: 0; background: #f4f6f8; }
header.top { background: #1d2327; color: #fff; padding: 18px 28px; }
header.top h1 { margin: 0 0 4px; font-size: 22px; }
header.top p { margin: 2px 0; color: #c9d1d6; }
.fleet { display: flex; gap: 10px; margin-top: 10px; flex-wrap: wrap; }
.pill { border-radius: 12px; padding: 2px 10px; font-weight: 600; font-size: 13px; background: #3a4349; }
.pill.ok { background: var(--ok); } .pill.drift { background: var(--drift); } .pill.na { background: var(--na); }
main { padding: 18px 28px; display: grid; gap: 18px; }
.node { background: #fff; border: 1px solid var(--line); border-left: 8px solid var(--ok); border-radius: 6px;
        padding: 14px 18px; }
.node.status-drift { border-left-color: var(--drift); }
.node.status-unavailable { border-left-color: var(--na); }
.node h2 { margin: 0; font-size: 18px; display: inline; }
.head { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
.badge { font-size: 12px; font-weight: 700; padding: 2px 8px; border-radius: 10px; color: #fff;
         background: var(--ok); }
.badge.drift { background: var(--drift); } .badge.unavailable { background: var(--na); }
.badge.sim { background: #8e44ad; }
.meta { color: var(--muted); margin: 4px 0 8px; }
.asked { margin: 6px 0 10px; padding: 6px 12px; background: #f7f9fa; border: 1px solid var(--line);
         border-radius: 4px; }
.asked h3, .node h3 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
                      margin: 10px 0 4px; }
.asked ul { margin: 0; padding-left: 18px; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: middle; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #fafbfc; }
tr.drift td { background: #fdecea; }
tr.drift td:first-child { box-shadow: inset 4px 0 0 var(--drift); }
td.diff { color: var(--drift); font-weight: 700; }
td.diff::after { content: " \\26A0"; }
.state-ok { color: var(--ok); font-weight: 700; } .state-drift { color: var(--drift); font-weight: 700; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 4px;
       background: var(--ok); } .dot.down { background: var(--drift); }
td.model, td.nw { white-space: nowrap; } td.state { min-width: 170px; } td.mps { min-width: 330px; }
.mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.small { font-size: 12px; color: var(--muted); }
ul.mpslist { list-style: none; margin: 0; padding: 0; }
ul.mpslist li.bad { color: var(--drift); font-weight: 600; }
ul.drift { margin: 4px 0; padding-left: 18px; color: var(--drift); }
svg.slices text { font: 600 10px "DejaVu Sans", Arial, sans-serif; }
.legend { display: flex; gap: 14px; flex-wrap: wrap; font-size: 12px; color: #c9d1d6; margin-top: 8px; }
.sw { display: inline-block; width: 14px; height: 10px; margin-right: 4px; vertical-align: -1px;
      border: 1px solid #fff4; }
footer { padding: 0 28px 24px; color: var(--muted); font-size: 12px; }
"""

_GI_COLOURS = {1: "#8ecae6", 2: "#48a9c5", 3: "#219ebc", 4: "#126782", 7: "#023047"}


def _e(value):
    return html.escape("" if value is None else str(value), quote=True)


def _segment_colour(segment):
    match = _PROFILE_SLICES.search(segment.get("profile") or "")
    return _GI_COLOURS.get(int(match.group(1)) if match else 0, "#5c7c8a")


def slices_svg(gpu, width=300, height=40, daemons=None):
    """An inline SVG drawing of a GPU's memory slices: one box per GPU instance (its MIG devices inside),
    free runs hatched, unusable runs crossed; a whole GPU is one box."""
    parts = ['<svg class="slices" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
             'role="img" aria-label="MIG slices of GPU %s">' % (width, height, width, height, gpu["index"]),
             '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
             'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f4f6f8"/>'
             '<line x1="0" y1="0" x2="0" y2="6" stroke="#b8c2c8" stroke-width="2"/></pattern></defs>']
    total = gpu["memory_slices"]
    if gpu["mig"]["current"] != "enabled" or not total:
        label = "whole GPU (MIG off)" if gpu["mig"]["capable"] else "whole GPU (no MIG)"
        fill = "#dfe6ea"
        shared = [d for d in daemons or [] if d["name"] in gpu["daemons"]]
        if shared:
            label = "whole GPU, MPS daemon %s" % ", ".join(d["short"] for d in shared)
            fill = "#d8c7ef"
        elif gpu["nvshare"] and gpu["nvshare"]["running"]:
            label = "whole GPU, time-sliced by nvshare"
            fill = "#f3dcb2"
        parts.append('<rect x="1" y="4" width="%d" height="%d" rx="3" fill="%s" stroke="#9aa7b0"/>'
                     % (width - 2, height - 14, fill))
        parts.append('<text x="%d" y="%d" text-anchor="middle" fill="#3b4850">%s</text>'
                     % (width // 2, (height - 14) // 2 + 8, _e(label)))
        parts.append("</svg>")
        return "".join(parts)
    cell = (width - 2) / float(total)
    box = height - 14
    for segment in gpu["segments"]:
        x = 1 + segment["start"] * cell
        w = segment["size"] * cell - 2
        if segment["kind"] == "gi":
            title = "%s on memory slices %s: %s" % (segment["profile"], segment["slices"], ", ".join(
                "%s %s" % (d["profile"], d["uuid"]) for d in segment["devices"]) or "no compute instance")
            parts.append('<g><title>%s</title><rect x="%.1f" y="4" width="%.1f" height="%d" rx="3" fill="%s"/>'
                         % (_e(title), x, w, box, _segment_colour(segment)))
            count = len(segment["devices"])
            for position in range(1, count):
                sx = x + w * position / count
                parts.append('<line x1="%.1f" y1="6" x2="%.1f" y2="%d" stroke="#fff" stroke-dasharray="2 2"/>'
                             % (sx, sx, box + 2))
            text = segment["label"] if len(segment["label"]) * 6.3 < w else segment["profile"].split(".")[0]
            parts.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#fff">%s</text></g>'
                         % (x + w / 2, box // 2 + 8, _e(text)))
        else:
            fill = "url(#hatch)" if segment["kind"] == "free" else "#eef1f3"
            parts.append('<g><title>%s</title><rect x="%.1f" y="4" width="%.1f" height="%d" rx="3" fill="%s" '
                         'stroke="#9aa7b0" stroke-dasharray="3 2"/>' % (_e(segment["why"]), x, w, box, fill))
            if segment["kind"] == "unusable":
                parts.append('<line x1="%.1f" y1="6" x2="%.1f" y2="%d" stroke="#b0bac0"/>'
                             '<line x1="%.1f" y1="%d" x2="%.1f" y2="6" stroke="#b0bac0"/>'
                             % (x + 2, x + w - 2, box + 2, x + 2, box + 2, x + w - 2))
            parts.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#5f6b73">%s</text></g>'
                         % (x + w / 2, box // 2 + 8, "free" if segment["kind"] == "free" else "&#215;"))
    for index in range(total):
        parts.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#8a969e" style="font-size:9px;'
                     'font-weight:400">%d</text>' % (1 + (index + 0.5) * cell, height - 1, index))
    parts.append("</svg>")
    return "".join(parts)


def _mps_cell(node, gpu):
    items = []
    daemons = dict((d["name"], d) for d in node["mps"])
    if gpu["mig"]["current"] == "enabled":
        for dev in gpu["mig_devices"]:
            daemon = daemons.get(dev["daemon"])
            if daemon is None:
                items.append('<li><span class="mono">%s</span> %s: no MPS daemon</li>'
                             % (_e(dev["profile"]), _e(short_uuid(dev["uuid"]))))
                continue
            items.append('<li class="%s" title="%s"><span class="dot%s"></span><b>%s</b> <span class="mono">%s</span> '
                         '&middot; %s</li>' % ("bad" if daemon["drift"] else "", _e(daemon["name"]),
                                               "" if daemon["running"] else " down", _e(dev["profile"]),
                                               _e(daemon["short"]), _e(_clients_text(daemon))))
    for name in gpu["daemons"]:
        daemon = daemons[name]
        items.append('<li class="%s" title="%s"><span class="dot%s"></span><b>%s</b> (%s) &middot; %s &middot; %s</li>'
                     % ("bad" if daemon["drift"] else "", _e(daemon["name"]), "" if daemon["running"] else " down",
                        _e(daemon["short"]), _e(daemon["serves"]), _e(daemon["limits_label"]),
                        _e(_clients_text(daemon))))
    return '<ul class="mpslist">%s</ul>' % "".join(items) if items else '<span class="small">none</span>'


def _clients_text(daemon):
    if not daemon["running"]:
        return "DOWN"
    clients = daemon["clients"]
    if not clients:
        return "no clients"
    return "%s: %s" % (_plural(len(clients), "client"), ", ".join(
        "%s (%s)" % (c["name"] or "pid", c["pid"]) for c in clients))


def _nvshare_cell(gpu):
    nvshare = gpu["nvshare"]
    if not nvshare:
        return '<span class="small">-</span>'
    if nvshare["running"]:
        return '<span class="dot"></span>scheduler%s' % (", TQ %ss" % nvshare["tq"] if nvshare["tq"] else "")
    return '<span class="dot down"></span>%s' % _e(nvshare["state"])


def _node_html(node):
    status_text = {"ok": "in sync", "drift": "drift", "unavailable": "no data"}[node["status"]]
    out = ['<section class="node status-%s" id="node-%s" data-host="%s" data-status="%s">'
           % (node["status"], _e(node["host"]), _e(node["host"]), node["status"])]
    out.append('<div class="head"><h2>%s</h2><span class="badge %s">%s</span>%s</div>'
               % (_e(node["host"]), node["status"], status_text,
                  '<span class="badge sim">simulated GPUs and driver</span>' if node["simulated"] else ""))
    meta = []
    if node["groups"]:
        meta.append("groups: " + ", ".join(node["groups"]))
    if node["driver"]:
        meta.append("driver %s" % node["driver"].get("version", "?"))
        if node["driver"].get("cuda_driver_version"):
            meta.append("CUDA %s" % node["driver"]["cuda_driver_version"])
    if node.get("models"):
        meta.append(node["models"])
    out.append('<p class="meta">%s</p>' % _e(" \u00b7 ".join(meta)))
    if node["note"]:
        out.append('<p class="small">%s</p>' % _e(node["note"]))
    if node["status"] == "unavailable":
        out.append('<ul class="drift">%s</ul></section>' % "".join("<li>%s</li>" % _e(e) for e in node["errors"]))
        return "".join(out)
    out.append('<div class="asked"><h3>Asked by the inventory</h3><ul>%s</ul></div>'
               % "".join("<li>%s</li>" % _e(line) for line in node["asked"]))
    out.append('<table class="gpus"><thead><tr><th>GPU</th><th>Model</th><th>Persistence</th><th>Compute mode</th>'
               '<th>MIG</th><th>MIG slices (memory slices 0-%d)</th><th>MPS daemons</th><th>nvshare</th>'
               '<th>State</th></tr></thead><tbody>' % (max([g["memory_slices"] for g in node["gpus"]] + [8]) - 1))
    for gpu in node["gpus"]:
        differs = set(gpu["differs"])
        persistence = "n/a" if gpu["persistence"] is None else ("on" if gpu["persistence"] else "off")

        def cell(value, key, extra=""):
            return '<td class="%s%s">%s</td>' % ("diff" if key in differs else "", extra, value)
        drift = gpu["drift"]
        out.append('<tr class="gpu%s" data-gpu="%d">' % (" drift" if drift else "", gpu["index"]))
        out.append('<td><b>%d</b></td><td class="model">%s<div class="small mono">%s</div></td>'
                   % (gpu["index"], _e(gpu["model"]), _e(gpu["pci_bus_id"])))
        out.append(cell(_e(persistence), "persistence", " nw"))
        out.append(cell(_e(gpu["compute_mode_label"]), "compute_mode", " nw"))
        out.append(cell(_e(_mig_word(gpu)), "mig", " nw"))
        out.append(cell(slices_svg(gpu, daemons=node["mps"]), "none"))
        out.append(cell(_mps_cell(node, gpu), "none", " mps"))
        out.append(cell(_nvshare_cell(gpu), "nvshare"))
        if drift:
            out.append('<td class="state"><span class="state-drift">drift</span><ul class="drift">%s</ul></td>'
                       % "".join("<li>%s</li>" % _e(d) for d in drift))
        else:
            out.append('<td class="state"><span class="state-ok">ok</span></td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    if node["mps"]:
        out.append('<h3>MPS daemons</h3><table class="mps"><thead><tr><th>Daemon</th><th>Serves</th><th>State</th>'
                   '<th>Limits</th><th>Clients</th><th>Client environment</th></tr></thead><tbody>')
        for daemon in node["mps"]:
            word = "running" if daemon["running"] else _e(daemon["unit"] or "down")
            state = '<span class="dot%s"></span>%s' % ("" if daemon["running"] else " down", word)
            if not daemon["in_inventory"]:
                state += ' <span class="small">(not in the inventory)</span>'
            out.append('<tr class="%s"><td class="mono">%s<div class="small">%s</div></td><td>%s</td><td class="nw">%s</td>'
                       '<td>%s</td><td>%s</td><td class="mono small">/etc/gpuops/mps/%s.env</td></tr>'
                       % ("drift" if daemon["drift"] else "", _e(daemon["name"]), _e(daemon["origin"]),
                          _e(daemon["serves"]), state, _e(daemon["limits_label"]), _e(_clients_text(daemon)),
                          _e(daemon["name"])))
        out.append("</tbody></table>")
    if node["drift"]:
        out.append('<h3>Drift from the inventory</h3><ul class="drift">%s</ul>'
                   % "".join("<li><b>%s</b>: %s</li>" % (_e(d["where"]), _e(d["what"])) for d in node["drift"]))
    out.append("</section>")
    return "".join(out)


def fleet(nodes, missing=None):
    """The node models, with a "no data" model for each host in `missing` (unreachable, or a task failed
    before its facts were read) and for anything that is not a model."""
    models = []
    for node in nodes or []:
        if isinstance(node, dict) and "status" in node:
            models.append(node)
        elif isinstance(node, str):
            missing = list(missing or []) + [node]
    for host in missing or []:
        if any(n["host"] == host for n in models):
            continue
        node = node_model({}, host=host)
        node["errors"] = ["the host was unreachable, or a task failed before its GPUs were read"]
        node["summary"] = "no data: " + node["errors"][0]
        models.append(node)
    return sorted(models, key=lambda n: n["host"])


def _fleet_counts(nodes):
    return {"nodes": len(nodes), "gpus": sum(len(n["gpus"]) for n in nodes),
            "ok": sum(1 for n in nodes if n["status"] == "ok"),
            "drift": sum(1 for n in nodes if n["status"] == "drift"),
            "unavailable": sum(1 for n in nodes if n["status"] == "unavailable"),
            "daemons": sum(len(n["mps"]) for n in nodes)}


def html_report(nodes, title="GPU fleet report", generated=None, missing=None):
    """A self-contained HTML page (inline CSS and SVG, no script, nothing fetched) for the node models."""
    nodes = fleet(nodes, missing)
    counts = _fleet_counts(nodes)
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<meta name="generator" content="gpuops.nvidia gpu_report">',
           "<title>%s</title><style>%s</style></head><body>" % (_e(title), _CSS)]
    out.append('<header class="top"><h1>%s</h1><p>%s%s, %s, %s</p>'
               % (_e(title), ("generated %s &middot; " % _e(generated)) if generated else "",
                  _plural(counts["nodes"], "node"), _plural(counts["gpus"], "GPU"),
                  _plural(counts["daemons"], "MPS daemon")))
    out.append('<div class="fleet"><span class="pill ok">%d in sync</span><span class="pill drift">%d drift</span>'
               '<span class="pill na">%d no data</span></div>' % (counts["ok"], counts["drift"], counts["unavailable"]))
    out.append('<div class="legend"><span><span class="sw" style="background:%s"></span>1g</span>'
               '<span><span class="sw" style="background:%s"></span>2g</span>'
               '<span><span class="sw" style="background:%s"></span>3g</span>'
               '<span><span class="sw" style="background:%s"></span>4g</span>'
               '<span><span class="sw" style="background:%s"></span>7g</span>'
               '<span><span class="sw" style="background:#d8c7ef"></span>whole GPU shared through MPS</span>'
               '<span><span class="sw" style="background:#f3dcb2"></span>whole GPU time-sliced by nvshare</span>'
               '<span><span class="sw" style="background:#f4f6f8"></span>free memory slices</span>'
               '<span><span class="sw" style="background:#eef1f3"></span>&#215; unusable (no profile fits)</span>'
               '<span><span class="sw" style="background:#fdecea"></span>differs from the inventory</span>'
               '</div></header><main>'
               % (_GI_COLOURS[1], _GI_COLOURS[2], _GI_COLOURS[3], _GI_COLOURS[4], _GI_COLOURS[7]))
    for node in nodes:
        out.append(_node_html(node))
    out.append("</main><footer>gpuops.nvidia &middot; playbooks/gpu_report.yml &middot; compared with the "
               "inventory's mig_*, mps_*, persistenced_*, nvshare_* and driver_* settings</footer></body></html>\n")
    return "".join(out)


# -- Markdown -----------------------------------------------------------------------------------------------

def _md(value):
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_slices(gpu):
    if gpu["mig"]["current"] != "enabled":
        return "whole GPU"
    parts = []
    for segment in gpu["segments"]:
        if segment["kind"] == "gi":
            parts.append("%s %s" % (segment["label"], segment["slices"]))
        else:
            parts.append("%s %s" % (segment["label"], segment["slices"]))
    return "`[" + " | ".join(parts) + "]`" if parts else "no MIG devices"


def markdown_report(nodes, title="GPU fleet report", generated=None, missing=None):
    """The same report as Markdown (GitHub tables): one section per node."""
    nodes = fleet(nodes, missing)
    counts = _fleet_counts(nodes)
    out = ["# %s" % title, ""]
    out.append("%s%s, %s, %s: %d in sync, %d drift, %d without data." % (
        ("Generated %s. " % generated) if generated else "", _plural(counts["nodes"], "node"),
        _plural(counts["gpus"], "GPU"), _plural(counts["daemons"], "MPS daemon"), counts["ok"], counts["drift"],
        counts["unavailable"]))
    for node in nodes:
        status = {"ok": "in sync", "drift": "DRIFT", "unavailable": "no data"}[node["status"]]
        out += ["", "## %s: %s" % (node["host"], status), ""]
        meta = []
        if node["simulated"]:
            meta.append("**simulated GPUs and driver**")
        if node["groups"]:
            meta.append("groups: " + ", ".join(node["groups"]))
        if node["driver"]:
            meta.append("driver %s" % node["driver"].get("version", "?"))
        if node.get("models"):
            meta.append(node["models"])
        out.append(" · ".join(meta))
        if node["note"]:
            out += ["", node["note"]]
        if node["status"] == "unavailable":
            out += [""] + ["- %s" % e for e in node["errors"]]
            continue
        out += ["", "Asked by the inventory:", ""] + ["- %s" % line for line in node["asked"]]
        out += ["", "| GPU | Model | Persistence | Compute mode | MIG | MIG slices | MPS | nvshare | State |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        daemons = dict((d["name"], d) for d in node["mps"])
        for gpu in node["gpus"]:
            differs = set(gpu["differs"])

            def mark(text, key):
                return "**%s** ⚠" % text if key in differs else text
            mps = []
            for dev in gpu["mig_devices"]:
                daemon = daemons.get(dev["daemon"])
                mps.append("%s %s: %s" % (dev["profile"], short_uuid(dev["uuid"]),
                                          ("%s, %s" % ("up" if daemon["running"] else "DOWN", _clients_text(daemon)))
                                          if daemon else "none"))
            for name in gpu["daemons"]:
                daemon = daemons[name]
                mps.append("%s (%s): %s, %s, %s" % (
                    daemon["short"], daemon["serves"], "up" if daemon["running"] else "DOWN", daemon["limits_label"],
                    _clients_text(daemon)))
            nvshare = "-"
            if gpu["nvshare"]:
                nvshare = "scheduler up" if gpu["nvshare"]["running"] else gpu["nvshare"]["state"]
            persistence = "n/a" if gpu["persistence"] is None else ("on" if gpu["persistence"] else "off")
            out.append("| %s |" % " | ".join(_md(c) for c in [
                gpu["index"], gpu["model"], mark(persistence, "persistence"),
                mark(gpu["compute_mode_label"], "compute_mode"), mark(_mig_word(gpu), "mig"), markdown_slices(gpu),
                mark("<br>".join(mps) or "-", "mps"), mark(nvshare, "nvshare"),
                "drift: " + "; ".join(gpu["drift"]) if gpu["drift"] else "ok"]))
        if node["mps"]:
            out += ["", "MPS daemons:", "", "| Daemon | Serves | State | Limits | Clients |",
                    "| --- | --- | --- | --- | --- |"]
            for daemon in node["mps"]:
                state = "running" if daemon["running"] else (daemon["unit"] or "down")
                if not daemon["in_inventory"]:
                    state += " (not in the inventory)"
                out.append("| %s |" % " | ".join(_md(c) for c in [
                    "`%s` (%s)" % (daemon["name"], daemon["origin"]), daemon["serves"], state,
                    daemon["limits_label"], _clients_text(daemon)]))
        if node["drift"]:
            out += ["", "Drift from the inventory:", ""]
            out += ["- **%s**: %s" % (d["where"], d["what"]) for d in node["drift"]]
    return "\n".join(out) + "\n"


class FilterModule(object):
    """GPU report filters."""

    def filters(self):
        return {
            "gpu_report_node": node_model,
            "gpu_report_table": text_table,
            "gpu_report_html": html_report,
            "gpu_report_markdown": markdown_report,
        }
