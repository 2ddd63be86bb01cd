#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nvidia_driver_info
short_description: What NVIDIA driver a node has, needs, and how its distribution installs it
version_added: 0.1.0
description:
  - Reads, without any NVIDIA driver, the NVIDIA GPUs and NVSwitches on the PCI bus (sysfs), the driver the running
    kernel has loaded (C(/sys/module/nvidia/version)), the nvidia kernel module that the boot kernel would load
    (its C(modules.dep) and C(modinfo)), the installed kernels and the distribution.
  - Checks a driver request (branch, open or proprietary kernel modules, exact version, source, fabric manager)
    against them and returns the distribution's install plan, which the C(gpuops.nvidia.driver) role renders with
    ansible-core's package modules. A request the node cannot satisfy fails with what is valid, for example an
    unknown branch (with the command that lists the valid ones), open kernel modules on a GPU older than Turing, or
    an NVSwitch system on a source without C(nvidia-fabricmanager).
  - Decides the action, V(skip) (no NVIDIA GPU and not forced), V(nothing_to_do) (the loaded driver is the one
    requested) or V(install), and whether a reboot is required (the boot kernel's module differs from the loaded one).
  - Read-only; it never changes the node.
author:
  - gpuops.nvidia contributors (@gpuops)
options:
  branch:
    description:
      - NVIDIA driver branch, three digits (V(535), V(550), V(570), V(580), ...). Default the source's own branch
        (Debian's archive has one per release) or V(580).
    type: str
  kernel_modules:
    description:
      - V(open) (NVIDIA's recommendation from Turing on, the only choice for Grace Hopper and Blackwell),
        V(proprietary) (needed before Turing), or V(auto) to choose from the GPUs on the PCI bus.
    type: str
    choices: [auto, open, proprietary]
    default: auto
  version:
    description:
      - Exact upstream driver version, for example V(580.95.05). Every driver package is pinned to it.
    type: str
  source:
    description:
      - V(distribution) installs the distribution's packages (Debian's non-free archive, Canonical's server
        packages); V(cuda) NVIDIA's CUDA network repository. RHEL and its rebuilds always use V(cuda).
    type: str
    choices: [distribution, cuda]
    default: distribution
  fabricmanager:
    description:
      - V(auto) plans C(nvidia-fabricmanager) when NVSwitches (PCI class 0680 of vendor 10de) are on the bus,
        V(install) always, V(skip) never.
    type: str
    choices: [auto, install, skip]
    default: auto
  install_without_gpu:
    description:
      - Plan an install even when no NVIDIA GPU is on the PCI bus (otherwise the action is V(skip)).
    type: bool
    default: false
  extra_packages:
    description:
      - More packages to install with the driver (returned in the plan).
    type: list
    elements: str
    default: []
  sysfs_root:
    description:
      - Where sysfs is mounted. A test seam, for a fake tree with the same layout
        (C(bus/pci/devices/*/{vendor,device,class}), C(module/nvidia/version)).
    type: path
    default: /sys
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    description: It changes nothing, so there is nothing to show.
  platform:
    support: full
    platforms: posix
    description: Debian 12/13, Ubuntu 22.04/24.04, RHEL/Rocky/AlmaLinux 8/9 on x86_64 or aarch64.
seealso:
  - name: NVIDIA Driver Installation Guide
    description: NVIDIA's packages, repositories and kernel module flavours per distribution.
    link: https://docs.nvidia.com/datacenter/tesla/driver-installation-guide/
"""

EXAMPLES = r"""
- name: What would installing branch 580 mean on this node?
  gpuops.nvidia.nvidia_driver_info:
    branch: "580"
  register: driver_info

- name: Show the plan
  ansible.builtin.debug:
    msg: "{{ driver_info.action }}: {{ driver_info.plan.kernel_packages | default([]) }}"
"""

RETURN = r"""
action:
  description: V(skip), V(nothing_to_do) or V(install).
  returned: success
  type: str
  sample: install
msg:
  description: One line saying what is loaded, what was requested and why the action.
  returned: success
  type: str
reboot_required:
  description: The boot kernel's nvidia module differs from the loaded one (or none is loaded).
  returned: success
  type: bool
distribution:
  description: family (debian, ubuntu, redhat), id, major, codename, arch, cuda_arch, name.
  returned: success
  type: dict
gpus:
  description: NVIDIA GPUs on the PCI bus.
  returned: success
  type: list
  elements: dict
  contains:
    bus_id:
      description: PCI address.
      type: str
      sample: "0000:18:00.0"
    device_id:
      description: PCI device id.
      type: str
      sample: "0x2330"
    pci_device_id:
      description: Device and vendor id in the collection's device_filter form.
      type: str
      sample: "0x233010DE"
    architecture:
      description: GPU generation from the device id (kepler ... blackwell, or unknown).
      type: str
      sample: hopper
    open_modules_supported:
      description: Turing or newer.
      type: bool
    open_modules_required:
      description: Grace Hopper or Blackwell.
      type: bool
nvswitches:
  description: NVSwitches on the PCI bus (bus_id, device_id).
  returned: success
  type: list
  elements: dict
kernels:
  description: running (uname), installed (image in /boot and modules), boot (the newest installed).
  returned: success
  type: dict
python:
  description: executable (the Python running the module, the one Ansible uses) and nvml_version (the
    nvidia-ml-py it imports, or null).
  returned: success
  type: dict
container:
  description: The node is a container (it runs its host's kernel).
  returned: success
  type: bool
loaded:
  description: version, branch and kernel_modules (open, proprietary, or null when unknown) of the loaded driver.
  returned: success
  type: dict
nouveau_loaded:
  description: The nouveau kernel module is loaded (it holds the GPUs until a reboot with it blacklisted).
  returned: success
  type: bool
installed:
  description: kernel, file and version of the nvidia module the boot kernel would load; null when there is none.
  returned: success
  type: dict
fabric:
  description:
    - With a driver loaded, each GPU's NVLink fabric state as NVML reports it (read with C(nvidia-ml-py) when the
      Python running the module has it). It explains the fabric manager decision where the GPUs are in a fabric
      but no NVSwitch is on the node's PCI bus, as in a VM whose host runs the fabric manager. The message then
      says so, and warns when the state is not V(completed).
    - read (NVML answered), error (why not, for example no driver loaded or no binding) and gpus, a list of
      bus_id, supported, state (V(not_supported), V(not_started), V(in_progress), V(completed)), status,
      status_code, clique_id, cluster_uuid and nvml_error.
  returned: success
  type: dict
plan:
  description:
    - How the distribution installs the request; null when the action is V(skip).
    - package_manager, source, branch, version, kernel_modules and kernel_modules_reason, components (apt
      components to enable), repository (NVIDIA's repository, or null), apt_pin (packages regex and version glob, or
      null), module_stream (dnf), kernel_packages, userspace_packages, fabricmanager_packages, header_packages,
      build_packages, extra_packages, hold_packages, version_package, fabricmanager_service, nvml_package,
      persistenced_binary, mps_control_binary, initramfs_command, list_branches.
  returned: success
  type: dict
error_kind:
  description: On failure, for example V(unknown_branch), V(invalid_argument), V(unsupported_platform),
    V(unsupported_hardware), V(unsupported_source).
  returned: failure
  type: str
"""

from ansible_collections.gpuops.nvidia.plugins.module_utils._driver import DRIVER_SPEC, inspect
from ansible_collections.gpuops.nvidia.plugins.module_utils._module import finish, new_module


def main():
    module = new_module(DRIVER_SPEC)

    def work():
        return inspect(module.params, module.run_command)

    finish(module, work)


if __name__ == "__main__":
    main()
