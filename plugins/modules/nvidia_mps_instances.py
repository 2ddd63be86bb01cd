#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nvidia_mps_instances
short_description: Plan, validate and write the settings of a set of NVIDIA MPS control daemons on a node
version_added: 0.1.0
description:
  - Expands named MPS daemons, one daemon per GPU not in MIG mode (O(per_gpu)) and one per MIG device
    (O(per_mig_device)), applies O(defaults), and validates every instance with the same validator as
    M(gpuops.nvidia.nvidia_mps), on the node, before anything changes.
  - Resolves each instance's devices (GPU indices, C(GPU-)/C(MIG-) UUIDs, PCI bus ids, C(mig:) placements, each
    instance's C(device_filter)) through NVML, checks that users and groups exist, that names are usable as systemd instance and directory
    names, and that no two instances share a pipe directory or a device. Every problem is reported at once.
  - Returns, per instance, the validated desired state (the options of M(gpuops.nvidia.nvidia_mps)) that the
    C(gpuops.nvidia.mps) role writes for its systemd helper, the client environment, and whether a running daemon
    was started with different start-time settings (so needs a restart).
  - Without O(config_dir) it is read-only and never reports a change (the C(gpuops.nvidia.mps) role's preflight).
  - With O(config_dir) it also writes, in one run, every instance's files for the C(gpuops-mps@.service) template
    unit, where their content differs, and reports per instance what it wrote (RV(instances[].written)) so that the
    role restarts or reloads only those daemons; it starts or stops nothing.
author:
  - gpuops.nvidia contributors (@gpuops)
requirements:
  - nvidia-ml-py (pynvml) on the managed node when devices are selected or daemons generated.
attributes:
  check_mode:
    support: full
    description: In check mode it reports the files it would write, and writes none.
  diff_mode:
    support: full
    description: Each file written (or to be written) with its content before and after.
  platform:
    support: full
    platforms: posix
    description: Linux with the NVIDIA driver.
options:
  instances:
    description:
      - Named daemons. Each item takes C(name) (required; C([A-Za-z0-9_][A-Za-z0-9_.-]*), the systemd instance
        and the pipe and log directory names) and the daemon options of M(gpuops.nvidia.nvidia_mps) (C(devices),
        C(device_filter), C(user), C(group), C(multiuser), C(default_active_thread_percentage),
        C(default_device_pinned_mem_limit), C(default_client_priority), C(compute_mode)).
    type: list
    elements: dict
    default: []
  per_gpu:
    description: One daemon per GPU that is not in MIG mode, named by its C(GPU-) UUID.
    type: bool
    default: false
  per_mig_device:
    description:
      - One daemon per existing MIG device, with C(compute_mode=keep), named C(gpu<index>-slice<start>-<profile>)
        (C(-ci<start>) added when its GPU instance holds several compute instances), e.g. C(gpu0-slice4-2g.20gb).
      - Its devices are the placement selector C(mig:<GPU UUID>:<GI start>:<CI start>), resolved to the current MIG
        UUID at every start of the daemon, so the daemon survives its MIG device being recreated (a reboot, the
        C(gpuops.nvidia.mig) role's boot-time re-apply), where a MIG UUID does not.
    type: bool
    default: false
  defaults:
    description:
      - Daemon options for every instance that does not set them (not C(devices) or C(device_filter)).
      - A C(compute_mode) default applies to whole-GPU daemons only; daemons serving MIG devices keep the compute
        mode unless their item sets it.
    type: dict
    default: {}
  pipe_root:
    description: Parent of the pipe directories, C(<pipe_root>/<name>).
    type: path
    default: /run/nvidia-mps
  log_root:
    description: Parent of the log directories, C(<log_root>/<name>).
    type: path
    default: /var/log/nvidia-mps
  binary:
    description: Path of C(nvidia-cuda-mps-control), written into each desired state; used to ask running daemons.
    type: path
    default: /usr/bin/nvidia-cuda-mps-control
  timeout:
    description: Seconds the daemons' helper waits for a start or a stop, written into each desired state.
    type: int
    default: 30
  config_dir:
    description:
      - When set, write each instance's files where their content differs (root-owned, mode 0644; directories
        created 0755) - C(<config_dir>/daemon/<name>.json), the validated desired state the unit's helper runs;
        C(<config_dir>/<name>.env), the client environment; and the drop-in
        C(<unit_dir>/gpuops-mps@<name>.service.d/10-gpuops.conf) with the daemon's C(User=) and C(Group=).
      - Unset, nothing is written.
    type: path
  unit_dir:
    description: Where the drop-ins go (with O(config_dir)).
    type: path
    default: /etc/systemd/system
  inspect:
    description:
      - The mps role's configuration directory (C(/etc/gpuops/mps)). When set, also report, in RV(inspected), what
        M(gpuops.nvidia.nvidia_mps) in check mode says of every planned daemon and of every daemon whose desired state
        is in C(<inspect>/daemon/) but not in the plan - one module run instead of one per daemon (the GPU report).
    type: path
seealso:
  - module: gpuops.nvidia.nvidia_mps
"""

EXAMPLES = r"""
- name: Validate the MPS daemons before the role changes anything
  gpuops.nvidia.nvidia_mps_instances:
    instances:
      - name: shared
        devices: ["0000:18:00.0"]
        default_device_pinned_mem_limit: {0: 20G}
    per_mig_device: true
    defaults: {user: root, group: root, compute_mode: exclusive_process}
  register: mps_plan

- name: Write the daemons' settings, client environments and drop-ins in one run
  gpuops.nvidia.nvidia_mps_instances:
    instances:
      - name: shared
        devices: ["0000:18:00.0"]
        default_device_pinned_mem_limit: {0: 20G}
    per_mig_device: true
    defaults: {user: root, group: root, compute_mode: exclusive_process}
    config_dir: /etc/gpuops/mps
  register: mps_written
"""

RETURN = r"""
instances:
  description: The planned daemons, named ones first.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Instance name.
      type: str
    config:
      description: The validated desired state, in the options of M(gpuops.nvidia.nvidia_mps).
      type: dict
    devices:
      description: The resolved devices (empty when the daemon sees every GPU).
      type: list
      elements: dict
    client_environment:
      description: What a client of this daemon needs in its environment (see M(gpuops.nvidia.nvidia_mps)).
      type: dict
    running:
      description: Whether the daemon runs now.
      type: bool
    restart_needed:
      description: Whether the running daemon was started with different devices, user, log directory or multiuser.
      type: bool
    drift:
      description: What differs, when restart_needed.
      type: list
      elements: str
    written:
      description:
        - With O(config_dir), which of the instance's files were written (or would be, in check mode) -
          V(settings) (its desired state; a reload applies changed defaults), V(dropin) (user or group; needs a
          restart) and V(environment) (the client environment file).
      type: list
      elements: str
  sample: [{"name": "shared", "running": false, "restart_needed": false, "drift": [],
            "client_environment": {"CUDA_MPS_PIPE_DIRECTORY": "/run/nvidia-mps/shared",
                                   "CUDA_MPS_LOG_DIRECTORY": "/var/log/nvidia-mps/shared",
                                   "CUDA_VISIBLE_DEVICES": "GPU-5b6a2e0c-0d4c-5b6a-8f0e-0e1c2d3b4a59"}}]
inspected:
  description:
    - With O(inspect), one entry per daemon, planned ones first, shaped like a registered loop result of
      M(gpuops.nvidia.nvidia_mps) in check mode (its return values, or C(failed), C(msg) and C(error_kind)), with
      C(item) = C({name, in_inventory, config}).
  returned: success, with O(inspect)
  type: list
  elements: dict
  sample: [{"item": {"name": "shared", "in_inventory": true, "config": {}}, "running": true, "pid": 4242,
            "servers": [], "defaults": {}, "actions": [], "changed": false}]
error_kind:
  description:
    - On failure, a stable keyword for the cause, for example V(invalid_argument), V(invalid_selection).
    - Every module of this collection reports failures under this key.
  returned: failure
  type: str
  sample: invalid_argument
nvml_code:
  description: On failure, the nvmlReturn_t code when NVML answered the call that failed.
  returned: failure, when NVML answered
  type: int
  sample: 999
"""

from ansible_collections.gpuops.nvidia.plugins.module_utils._module import finish, new_module
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_instances import PLAN_SPEC, plan


def main():
    module = new_module(PLAN_SPEC)

    def run(argv, env=None, data=None):
        return module.run_command(argv, data=data, binary_data=True, environ_update=env or {}, check_rc=False)

    finish(module, lambda: plan(module.params, run, check_mode=module.check_mode))


if __name__ == "__main__":
    main()
