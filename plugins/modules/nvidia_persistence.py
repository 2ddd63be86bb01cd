#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nvidia_persistence
short_description: Enable or disable persistence mode on NVIDIA GPUs through NVML
version_added: 0.1.0
description:
  - Reads and sets the persistence mode of the selected NVIDIA GPUs through NVML (C(pynvml)), the flag that keeps
    the driver initialised on a GPU while no process uses it, so that CUDA jobs do not pay the initialisation
    cost on every start.
  - Every selected GPU is read before any is written. A GPU that does not support persistence mode, or cannot
    report it, fails the task with nothing changed on any GPU.
  - The flag set through NVML is the legacy kernel flag; it reverts to disabled at every reboot. NVIDIA
    recommends running the C(nvidia-persistenced) daemon instead, which enables persistence when it starts.
    When this module enables persistence mode while no C(nvidia-persistenced) runs, it succeeds and warns; the
    C(gpuops.nvidia.persistenced) role runs the daemon the NVIDIA way.
  - When it disables persistence mode while C(nvidia-persistenced) runs, it warns that the daemon enables it
    again when it restarts.
  - Setting persistence mode needs root (use C(become=true)); reading it does not.
author:
  - gpuops.nvidia contributors (@gpuops)
extends_documentation_fragment:
  - gpuops.nvidia.devices
options:
  state:
    description:
      - V(enabled) turns persistence mode on for every selected GPU, V(disabled) turns it off.
    type: str
    choices: [enabled, disabled]
    default: enabled
  persistenced_run_dir:
    description:
      - The runtime directory of C(nvidia-persistenced), where the module looks for its pid file
        C(nvidia-persistenced.pid) and its socket C(socket) to tell whether the daemon runs.
    type: path
    default: /var/run/nvidia-persistenced
attributes:
  check_mode:
    support: full
    description: Reads the GPUs and reports what would change; sets nothing.
  diff_mode:
    support: full
    description: Shows each selected GPU's persistence mode before and after.
  platform:
    support: full
    platforms: posix
    description: Linux with the NVIDIA driver.
notes:
  - The NVIDIA documentation calls the kernel flag "Persistence Mode (Legacy)" and recommends
    C(nvidia-persistenced). When the daemon stops it disables persistence mode on every GPU it manages.
seealso:
  - name: NVIDIA Driver Persistence
    description: Persistence mode and the persistence daemon.
    link: https://docs.nvidia.com/deploy/driver-persistence/index.html
"""

EXAMPLES = r"""
- name: Enable persistence mode on every GPU
  gpuops.nvidia.nvidia_persistence:
    state: enabled
  become: true

- name: Disable persistence mode on two GPUs chosen by UUID and PCI bus id
  gpuops.nvidia.nvidia_persistence:
    state: disabled
    devices:
      - GPU-5bd8e2c4-5f2b-7a1e-1f60-0d2bc7c1a1e1
      - "0000:18:00.0"
  become: true

- name: Enable persistence mode on the H100 80GB HBM3 GPUs only
  gpuops.nvidia.nvidia_persistence:
    state: enabled
    device_filter: ["0x233010DE"]
  become: true

- name: Assert (without changing anything) that persistence mode is on everywhere
  gpuops.nvidia.nvidia_persistence:
    state: enabled
  check_mode: true
  register: persistence
  failed_when: persistence is changed
"""

RETURN = r"""
state:
  description: The requested state.
  returned: success
  type: str
  sample: enabled
gpus:
  description: One entry per selected GPU, in index order.
  returned: always when the GPUs could be read
  type: list
  elements: dict
  contains:
    index:
      description: NVML index of the GPU.
      type: int
      sample: 0
    uuid:
      description: GPU UUID.
      type: str
      sample: GPU-5bd8e2c4-5f2b-7a1e-1f60-0d2bc7c1a1e1
    bus_id:
      description: PCI bus id in NVML's form.
      type: str
      sample: "00000000:18:00.0"
    name:
      description: Product name.
      type: str
      sample: NVIDIA H100 80GB HBM3
    before:
      description: Persistence mode before the task.
      type: str
      sample: disabled
    after:
      description: Persistence mode after the task (in check mode, what it would be).
      type: str
      sample: enabled
    changed:
      description: Whether this GPU's mode changed (or would change in check mode).
      type: bool
      sample: true
persistenced:
  description: Whether nvidia-persistenced runs on the node.
  returned: success
  type: dict
  contains:
    running:
      description: True when its pid file names a live process or its socket accepts a connection.
      type: bool
      sample: false
    pid:
      description: The daemon's pid from its pid file, if known.
      type: int
      sample: 1234
    evidence:
      description: V(pid_file), V(socket), or null when it does not run.
      type: str
      sample: pid_file
error_kind:
  description:
    - On failure, a stable keyword for the cause, for example V(no_permission), V(not_supported), V(invalid_selection), V(driver_not_loaded).
    - Every module of this collection reports failures under this key.
  returned: failure
  type: str
  sample: no_permission
nvml_code:
  description: On failure, the nvmlReturn_t code when NVML answered the call that failed.
  returned: failure, when NVML answered
  type: int
  sample: 999
"""

from ansible_collections.gpuops.nvidia.plugins.module_utils._module import finish, new_module
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession
from ansible_collections.gpuops.nvidia.plugins.module_utils._persistence import PERSISTENCE_SPEC, ensure


def main():
    module = new_module(PERSISTENCE_SPEC)

    def work():
        with NvmlSession() as nvml:
            return ensure(nvml, module.params, check_mode=module.check_mode)

    finish(module, work)


if __name__ == "__main__":
    main()
