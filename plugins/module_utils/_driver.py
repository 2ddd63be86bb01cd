# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Driver engine: what the node has (PCI devices, loaded and installed driver, kernels) and what to install.

Plain Python: no Ansible imports. `DRIVER_SPEC` is the request (the driver role's variables under the module's
option names), `check_request()` its one validator, `inspect()` reads the node and decides:

* `action`: `skip` (no NVIDIA GPU on the PCI bus and not forced), `nothing_to_do` (the loaded driver is the one
  requested) or `install`;
* `plan`: repository, packages, hold list and pins from `_driver_packages.select_packages()`;
* `reboot_required`: the kernel module that the boot kernel would load differs from the loaded one;
* `fabric`: with a driver loaded, each GPU's NVLink fabric state as NVML reports it, which explains the fabric
  manager decision where NVSwitches are not on the node's PCI bus (a VM whose host runs the fabric manager).

Nothing here writes: the role installs with ansible-core's package modules and asks again afterwards.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import sys

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import (
    GpuopsError,
    argument_spec,
    check_options,
    invalid,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._driver_apt import missing_components, read_sources
from ansible_collections.gpuops.nvidia.plugins.module_utils._driver_hardware import (
    branch_of,
    in_container,
    kernels,
    loaded_driver,
    nvidia_module_file,
    os_release,
    pci_devices,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._gpu_info import fabric_info
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession, nvml_py_version
from ansible_collections.gpuops.nvidia.plugins.module_utils._driver_packages import (
    default_branch,
    distribution,
    select_packages,
)

DRIVER_SPEC = argument_spec({
    "branch": {"type": "str"},
    "kernel_modules": {"type": "str", "choices": ["auto", "open", "proprietary"], "default": "auto"},
    "version": {"type": "str"},
    "source": {"type": "str", "choices": ["distribution", "cuda"], "default": "distribution"},
    "fabricmanager": {"type": "str", "choices": ["auto", "install", "skip"], "default": "auto"},
    "install_without_gpu": {"type": "bool", "default": False},
    "extra_packages": {"type": "list", "elements": "str", "default": []},
    "sysfs_root": {"type": "path", "default": "/sys"},
})

_BRANCH = re.compile(r"^\d{3}$")
_FULL_VERSION = re.compile(r"^\d{3}\.\d{1,3}(\.\d{1,3})?$")


def check_request(params):
    """The request checked against DRIVER_SPEC plus the rules the spec cannot say; raises naming what is valid."""
    params = check_options(DRIVER_SPEC, params)
    branch = params["branch"] = (params["branch"] or "").strip() or None
    version = params["version"] = (params["version"] or "").strip() or None
    if branch is not None and not _BRANCH.match(branch):
        raise invalid("branch must be an NVIDIA driver branch, three digits such as 535, 550, 570 or 580; got %r"
                      % branch)
    if version is not None:
        if not _FULL_VERSION.match(version):
            raise invalid("version must be a full driver version such as 580.95.05 (the upstream version, without "
                          "the distribution's revision); got %r" % version)
        if branch is not None and branch_of(version) != branch:
            raise invalid("version %s is not on branch %s: give a version of that branch, or leave the branch out"
                          % (version, branch))
        params["branch"] = branch_of(version)
    if not os.path.isabs(params["sysfs_root"]):
        raise invalid("sysfs_root must be an absolute path; got %r" % params["sysfs_root"])
    return params


def installed_driver(kernel_facts, run, modules_dir="/lib/modules"):
    """The nvidia module the boot kernel would load: {kernel, file, version} or None.

    `run(argv)` -> (rc, stdout, stderr) runs modinfo (it reads compressed modules too).
    """
    release = kernel_facts["boot"] or kernel_facts["running"]
    path = nvidia_module_file(release, modules_dir)
    if path is None:
        return None
    rc, out, _err = run(["modinfo", "-F", "version", path])
    version = out.strip() if rc == 0 and out.strip() else None
    return {"kernel": release, "file": path, "version": version, "branch": branch_of(version)}


def loaded_matches(request, plan, loaded):
    """True when the running kernel module is what the request asks for (branch, version, kernel modules)."""
    if not loaded or loaded["branch"] != plan["branch"]:
        return False
    if request["version"] and loaded["version"] != request["version"]:
        return False
    if request["kernel_modules"] != "auto" and loaded["kernel_modules"] not in (None, plan["kernel_modules"]):
        return False
    return True


def nvml_fabric(loaded, session_factory=NvmlSession):
    """Each GPU's NVLink fabric state from NVML ({read, error, gpus: [{bus_id, state, status, clique_id, ...}]}).

    Read only with a driver loaded; never fails: a node without a usable binding or driver says why in `error`.
    """
    if not loaded:
        return {"read": False, "error": "no NVIDIA driver is loaded", "gpus": []}
    try:
        with session_factory() as session:
            gpus = [dict(fabric_info(session, gpu), bus_id=gpu.bus_id) for gpu in session.gpus()]
    except GpuopsError as exc:
        return {"read": False, "error": "%s (%s)" % (exc.message, exc.kind), "gpus": []}
    return {"read": True, "error": None, "gpus": gpus}


def fabric_note(plan, hardware, fabric):
    """Why the plan has the fabric manager or not, when there is something to explain; None otherwise."""
    switches = len(hardware["nvswitches"])
    if switches:
        if not plan["fabricmanager"]:
            return ("%d NVSwitches are on the PCI bus but driver_fabricmanager is skip: CUDA fails on these GPUs until "
                    "a fabric manager of the driver's exact version runs" % switches)
        return "%d NVSwitches on the PCI bus: nvidia-fabricmanager goes with the driver" % switches
    states = {}
    for gpu in fabric["gpus"]:
        if gpu["supported"]:
            states.setdefault(gpu["state"], []).append(gpu["bus_id"])
    if not states:
        return None
    what = "; ".join("%s on %s" % (state, ", ".join(bus_ids)) for state, bus_ids in sorted(states.items()))
    managed = "installed as requested (driver_fabricmanager: install)" if plan["fabricmanager"] else "not installed here"
    if set(states) == {"completed"}:
        return ("NVML reports NVLink fabric state %s, but no NVSwitch is on this node's PCI bus: the fabric is managed "
                "outside this node (a VM whose host runs the fabric manager); nvidia-fabricmanager is %s"
                % (what, managed))
    return ("WARNING: NVML reports NVLink fabric state %s and no NVSwitch is on this node's PCI bus: the fabric "
            "manager that registers these GPUs runs outside this node (the VM's host) and has not finished; CUDA "
            "fails on them until it has. nvidia-fabricmanager is %s" % (what, managed))


def decide(request, distro, hardware, loaded, installed):
    """action, plan, reboot_required and the message the role shows, from what inspect() read."""
    has_gpu = bool(hardware["gpus"])
    if not has_gpu and not request["install_without_gpu"]:
        return {"action": "skip", "plan": None, "reboot_required": False,
                "msg": "no NVIDIA GPU on the PCI bus (%s/bus/pci/devices): nothing to install; set "
                       "driver_install_without_gpu: true to install anyway" % request["sysfs_root"]}
    request = dict(request)
    request["branch"] = request["branch"] or default_branch(distro, request["source"])
    plan = select_packages(distro, request, hardware)
    reboot = bool(installed and installed["version"] and (not loaded or loaded["version"] != installed["version"]))
    if loaded_matches(request, plan, loaded):
        return {"action": "nothing_to_do", "plan": plan, "reboot_required": reboot,
                "msg": "driver %s (%s kernel modules) is loaded and is what was requested (branch %s%s): nothing to "
                       "do" % (loaded["version"], loaded["kernel_modules"] or "unknown", plan["branch"],
                               ", version %s" % request["version"] if request["version"] else "")}
    what = "branch %s%s, %s kernel modules (%s)" % (
        plan["branch"], ", version %s" % request["version"] if request["version"] else "",
        plan["kernel_modules"], plan["kernel_modules_reason"])
    now = ("driver %s is loaded" % loaded["version"]) if loaded else "no NVIDIA driver is loaded"
    return {"action": "install", "plan": plan, "reboot_required": reboot,
            "msg": "%s; requested %s from %s" % (
                now, what, "NVIDIA's CUDA repository" if plan["source"] == "cuda" else "the distribution's archive")}


def python_binding():
    """The interpreter running this and the nvidia-ml-py version it imports (None when it has none)."""
    return {"executable": sys.executable, "nvml_version": nvml_py_version()}


def inspect(params, run, os_release_path="/etc/os-release", boot_dir="/boot", modules_dir="/lib/modules",
            etc_apt="/etc/apt", session_factory=NvmlSession):
    """Read the node and decide; returns the module's result (never changes anything)."""
    request = check_request(params)
    distro = distribution(os_release(os_release_path), os.uname()[4])
    devices = pci_devices(request["sysfs_root"])
    kernel_facts = kernels(boot_dir, modules_dir)
    hardware = {"gpus": devices["gpus"], "nvswitches": devices["nvswitches"], "kernels": kernel_facts}
    loaded = loaded_driver(request["sysfs_root"])
    installed = installed_driver(kernel_facts, run, modules_dir)
    decision = decide(request, distro, hardware, loaded, installed)
    fabric = nvml_fabric(loaded, session_factory)
    note = fabric_note(decision["plan"], hardware, fabric) if decision["plan"] is not None else None
    if note:
        decision["msg"] = "%s. Fabric manager: %s" % (decision["msg"], note)
    plan = decision["plan"]
    if plan is not None:
        plan["apt_sources"] = (missing_components(read_sources(etc_apt), distro["codename"], plan["components"])
                               if plan["components"] else [])
    return {
        "changed": False,
        "distribution": distro,
        "gpus": devices["gpus"],
        "nvswitches": devices["nvswitches"],
        "kernels": kernel_facts,
        "container": in_container(),
        "python": python_binding(),
        "loaded": loaded,
        "nouveau_loaded": os.path.isdir(os.path.join(request["sysfs_root"], "module", "nouveau")),
        "installed": installed,
        "fabric": fabric,
        "action": decision["action"],
        "plan": decision["plan"],
        "reboot_required": decision["reboot_required"],
        "msg": decision["msg"],
    }
