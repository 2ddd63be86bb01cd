# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nvshare's desired state: the one argument spec, the one validator, the names on the node, and the step that
applies a scheduler's settings through nvsharectl. Plain Python: no Ansible imports, no NVML.

nvshare (github.com/grgalex/nvshare) compiles one socket path into all three of its programs:
/var/run/nvshare/scheduler.sock. The scheduler never touches a GPU (it hands a lock to one client at a time);
libnvshare.so, preloaded into a CUDA program, connects to that path. So one scheduler per GPU needs one path per
GPU *as each process sees it*: every scheduler instance and every client service gets /run/nvshare/<GPU UUID>
bound over /run/nvshare in its own mount namespace (systemd BindPaths=/BindReadOnlyPaths=), and the same compiled-in
path reaches that GPU's scheduler. `_nvshare_plan` resolves the GPUs on the node; this module names things.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import time

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import (
    SELECTOR_SPEC,
    GpuopsError,
    argument_spec,
    check_options,
    check_selector,
)

# Where nvshare looks (compiled in as /var/run/nvshare/; /var/run is /run on every systemd distribution).
SOCKET_DIR = "/run/nvshare"
# Each GPU's scheduler directory on the host, /run/nvshare-gpus/<GPU UUID>, bound over SOCKET_DIR for the GPU's
# scheduler and its clients. Not under SOCKET_DIR: a unit's RuntimeDirectory= is also mounted at its own path in
# the unit's namespace, which under the bound SOCKET_DIR would nest the directory in itself.
GPU_ROOT = "/run/nvshare-gpus"
SOCKET_NAME = "scheduler.sock"
# Written by the unit's ExecStartPost/ExecReload into the instance's own directory: what nvsharectl applied.
APPLIED_NAME = "gpuops-applied.json"
UNIT_TEMPLATE = "nvshare-scheduler@.service"
DROPIN_NAME = "50-gpuops-nvshare.conf"
FILES = {  # file -> (directory under the prefix, mode)
    "libnvshare.so": ("lib", "0644"),
    "nvshare-scheduler": ("sbin", "0755"),
    "nvsharectl": ("bin", "0755"),
}
MAX_TQ = 86400
MIN_SENSIBLE_TQ = 10
CHECKSUM = re.compile(r"^sha256:[0-9a-fA-F]{64}$")
URL = re.compile(r"^(https?|ftp)://[^\s]+$")
SERVICE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?(\.service)?$")
GLIBC = re.compile(r"^[0-9]+\.[0-9]+$")

CLIENT_SPEC = {
    "service": {"type": "str", "required": True},
    "device": {"type": "raw"},
    "single_oversub": {"type": "bool"},
    "restart": {"type": "bool", "default": False},
}

NVSHARE_SPEC = argument_spec(SELECTOR_SPEC, {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "install_method": {"type": "str", "choices": ["release", "source"], "default": "release"},
    "archive": {"type": "str"},
    "archive_checksum": {"type": "str"},
    "file_checksums": {"type": "dict", "default": {}},
    "archive_facts": {"type": "dict", "default": {}},
    "release_min_glibc": {"type": "str", "default": "2.34"},
    "prefix": {"type": "path", "default": "/usr/local"},
    "cache_dir": {"type": "path", "default": "/var/cache/gpuops-nvshare"},
    "default_device": {"type": "raw"},
    "tq": {"type": "int", "default": 30},
    "anti_thrash": {"type": "bool", "default": True},
    "debug": {"type": "bool", "default": False},
    "clients": {"type": "list", "elements": "dict", "default": []},
    "single_oversub": {"type": "bool", "default": False},
    "ld_so_preload": {"type": "bool", "default": False},
    "allow_mig": {"type": "bool", "default": False},
    "allow_mps": {"type": "bool", "default": False},
    "mps_config_dir": {"type": "path", "default": "/etc/gpuops/mps"},
    "timeout": {"type": "int", "default": 30},
})


def unit_name(instance):
    return "nvshare-scheduler@%s.service" % instance


def instance_dir(instance, gpu_root=GPU_ROOT):
    return os.path.join(gpu_root, instance)


def service_name(name):
    """`jupyterhub` -> `jupyterhub.service`."""
    return name if name.endswith(".service") else name + ".service"


def glibc_tuple(text):
    return tuple(int(part) for part in text.split("."))


def archive_kind(archive):
    return "url" if URL.match(archive or "") else "path"


def _check_install(params, problems):
    archive = params.get("archive")
    method = params["install_method"]
    facts = params.get("archive_facts") or {}
    if not archive:
        problems.append("archive is required: a release tarball URL or a path on the controller (a tarball, or a "
                        "directory with libnvshare.so, nvshare-scheduler and nvsharectl), or with install_method "
                        "source a source tarball of nvshare")
        return
    if not GLIBC.match(params["release_min_glibc"] or ""):
        problems.append("release_min_glibc must be a glibc version such as 2.34, got %r" % params["release_min_glibc"])
    kind = archive_kind(archive)
    if kind == "path" and not os.path.isabs(archive):
        problems.append("archive %r is neither a URL (https://, http://, ftp://) nor an absolute path on the "
                        "controller" % archive)
        return
    directory = kind == "path" and facts.get("isdir")
    if kind == "path" and facts and not facts.get("exists"):
        problems.append("archive %s does not exist on the controller" % archive)
        return
    if directory:
        if method == "source":
            problems.append("install_method source builds from a source tarball (URL or file), not from the "
                            "directory %s" % archive)
            return
        _check_file_checksums(params, facts, problems)
        return
    checksum = params.get("archive_checksum")
    if not checksum:
        problems.append("archive_checksum is required for %s: give it as sha256:<64 hex digits> (sha256sum of the "
                        "tarball)" % archive)
    elif not CHECKSUM.match(checksum):
        problems.append("archive_checksum must be sha256:<64 hex digits>, got %r" % checksum)
    elif kind == "path" and facts.get("checksum") and facts["checksum"].lower() != checksum.split(":", 1)[1].lower():
        problems.append("archive %s does not match archive_checksum: the file is sha256:%s, archive_checksum says %s"
                        % (archive, facts["checksum"].lower(), checksum))
    if params.get("file_checksums"):
        problems.append("file_checksums is for an archive that is a directory; %s is a %s: use archive_checksum"
                        % (archive, "URL" if kind == "url" else "file"))


def _check_file_checksums(params, facts, problems):
    wanted = params.get("file_checksums") or {}
    unknown = sorted(set(wanted) - set(FILES))
    if unknown:
        problems.append("file_checksums: unknown file(s) %s; valid: %s" % (", ".join(unknown), ", ".join(sorted(FILES))))
    missing = sorted(set(FILES) - set(wanted))
    if missing:
        problems.append("file_checksums must give sha256:<64 hex digits> for each of %s (the archive %s is a "
                        "directory); missing: %s" % (", ".join(sorted(FILES)), params["archive"], ", ".join(missing)))
    found = facts.get("files") or {}
    for name in sorted(set(wanted) & set(FILES)):
        value = wanted[name]
        if not isinstance(value, str) or not CHECKSUM.match(value):
            problems.append("file_checksums[%s] must be sha256:<64 hex digits>, got %r" % (name, value))
            continue
        fact = found.get(name)
        if fact is None:
            continue
        if not fact.get("exists"):
            problems.append("%s has no %s" % (params["archive"], name))
        elif fact.get("checksum") and fact["checksum"].lower() != value.split(":", 1)[1].lower():
            problems.append("%s/%s does not match file_checksums[%s]: the file is sha256:%s"
                            % (params["archive"], name, name, fact["checksum"].lower()))


def _check_clients(params, problems):
    clients, seen = [], {}
    for position, item in enumerate(params["clients"]):
        label = "clients[%d]" % position
        if isinstance(item, dict) and item.get("service"):
            label = "client %s" % item["service"]
        try:
            client = check_options(CLIENT_SPEC, item, where=label)
        except GpuopsError as exc:
            problems.append(exc.message)
            continue
        name = client["service"].strip()
        if not SERVICE.match(name) or name.startswith("-"):
            problems.append("%s: service must be a systemd service name such as jupyterhub or slurmd.service "
                            "(letters, digits, ':', '_', '.', '-', '\\', one '@' for a template)" % label)
            continue
        name = service_name(name)
        if name.startswith("nvshare-scheduler@") or name.startswith("gpuops-"):
            problems.append("%s: %s is a unit of this collection, not an nvshare client" % (label, name))
            continue
        if name in seen:
            problems.append("%s: %s is listed twice (also %s): one GPU per service" % (label, name, seen[name]))
            continue
        seen[name] = label
        if isinstance(client["device"], (list, dict, bool, float)):
            problems.append("%s: device must be one GPU index, GPU- UUID or PCI bus id, got %r"
                            % (label, client["device"]))
            continue
        client["service"] = name
        clients.append(client)
    params["clients"] = clients


def validate(params, where=None):
    """Apply NVSHARE_SPEC and the rules between options, without NVML; every problem at once.

    Returns the normalized desired state (what the role writes to nvshare.json and the unit's helper reads back).
    Raises GpuopsError(kind=invalid_argument) naming each problem and what is valid.
    """
    params = check_options(NVSHARE_SPEC, params, where=where)
    problems = []
    try:
        check_selector(params)
    except GpuopsError as exc:
        problems.append(exc.message)
    if not 1 <= params["tq"] <= MAX_TQ:
        problems.append("tq must be a whole number of seconds from 1 to %d (nvsharectl -T takes a positive "
                        "integer; nvshare's default is 30), got %d" % (MAX_TQ, params["tq"]))
    if not 1 <= params["timeout"] <= 600:
        problems.append("timeout must be 1 to 600 seconds, got %d" % params["timeout"])
    if not os.path.isabs(params["prefix"]):
        problems.append("prefix must be an absolute path, got %r" % params["prefix"])
    if params["default_device"] is not None and isinstance(params["default_device"], (list, dict, bool, float)):
        problems.append("default_device must be one GPU index, GPU- UUID or PCI bus id, got %r"
                        % (params["default_device"],))
    _check_clients(params, problems)
    if params["state"] == "present":
        _check_install(params, problems)
    if problems:
        prefix = "%s: " % where if where else ""
        raise GpuopsError(prefix + "; ".join(problems) + " (nothing was changed)", kind="invalid_argument")
    return params


# -- applying a scheduler's settings (the unit's ExecStartPost and ExecReload) -------------------------------

def nvsharectl_argv(nvsharectl, tq, anti_thrash):
    return [nvsharectl, "-S", "on" if anti_thrash else "off", "-T", str(tq)]


def read_applied(path):
    """The record configure() wrote, or None."""
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def configure(desired, pid, run, socket_path=os.path.join("/var/run/nvshare", SOCKET_NAME),
              applied_path=os.path.join("/var/run/nvshare", APPLIED_NAME), sleep=time.sleep, clock=time.time):
    """Apply TQ and anti-thrash to the scheduler this process sees at the compiled-in socket path.

    Runs inside the scheduler unit's mount namespace (so /var/run/nvshare is that GPU's directory). Waits up to
    `timeout` seconds for the scheduler to listen, runs nvsharectl (argv), and records what it applied, with the
    scheduler's pid, in the instance's directory. nvshare cannot report its settings back, so this record is what
    the role compares with the desired state. Returns log lines; raises GpuopsError(kind=scheduler_unreachable).
    """
    argv = nvsharectl_argv(os.path.join(desired["prefix"], "bin", "nvsharectl"), desired["tq"],
                           desired["anti_thrash"])
    deadline = clock() + desired["timeout"]
    while True:
        rc, out, err = run(argv)
        text = "\n".join(part.strip() for part in (out or "", err or "") if part and part.strip())
        if rc == 0 and "Failed to" not in text:
            break
        if clock() >= deadline:
            raise GpuopsError("nvsharectl could not apply TQ %d s and anti-thrash %s to the scheduler at %s within "
                              "%d s (rc %s): %s" % (desired["tq"], "on" if desired["anti_thrash"] else "off",
                                                    socket_path, desired["timeout"], rc, text or "no output"),
                              kind="scheduler_unreachable")
        sleep(0.2)
    record = {"pid": int(pid) if pid not in (None, "") else None, "tq": desired["tq"],
              "anti_thrash": "on" if desired["anti_thrash"] else "off", "applied_at": int(clock()),
              "nvsharectl": argv}
    tmp = applied_path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(record, handle, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.rename(tmp, applied_path)
    return ["applied TQ %d s and anti-thrash %s through %s (scheduler pid %s)"
            % (desired["tq"], record["anti_thrash"], " ".join(argv), record["pid"])]
