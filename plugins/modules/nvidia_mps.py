#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nvidia_mps
short_description: Manage an NVIDIA CUDA MPS control daemon (whole GPUs or MIG devices)
version_added: 0.1.0
description:
  - Starts, configures, reports and stops one C(nvidia-cuda-mps-control) daemon, identified by its pipe directory,
    serving whole GPUs or MIG devices.
  - Sets the daemon's default active thread percentage, default per-device pinned memory limits and default client
    priority through the control commands, reading the live values first and setting only what differs, so a
    limit change never restarts the daemon. These defaults apply to MPS servers started afterwards (an MPS server
    starts with the first client of a user).
  - Optionally sets the GPUs' compute mode through NVML before the start and restores it when the daemon is
    stopped, recording the original mode in a small state file in the pipe directory.
  - Reports the running MPS servers and their clients.
  - O(devices) also takes MIG devices, and the daemon then serves those MIG devices, given by MIG device UUID (C(MIG-...)),
    or by placement, C(mig:<GPU>:<GI start>:<CI start>) (the GPU by index, C(GPU-) UUID or PCI bus id; the first
    memory slice of the GPU instance; the first compute slice of the compute instance in it). A MIG UUID is new each
    time the instance is created (a reboot, a layout re-applied at boot); a placement is resolved to the current
    MIG UUID at every start. A GPU in MIG mode cannot be listed itself; one daemon per MIG device is the supported
    setup. With V(all) and no O(device_filter)
    the daemon sees every GPU; otherwise the selected devices' UUIDs go into the daemon's C(CUDA_VISIBLE_DEVICES)
    and into RV(client_environment).
  - Settings that only a start sets (O(devices), O(log_directory), O(user), O(multiuser)) restart the daemon when
    they differ from the running daemon's, unless clients are connected, which fails unless O(state=restarted).
author:
  - gpuops.nvidia contributors (@gpuops)
requirements:
  - The NVIDIA driver's C(nvidia-cuda-mps-control) on the managed node.
  - nvidia-ml-py (pynvml) when O(devices) or O(device_filter) select devices, or O(compute_mode) is not V(keep).
  - C(runuser) (util-linux) when O(user) differs from the user the module runs as.
extends_documentation_fragment:
  - gpuops.nvidia.devices
attributes:
  check_mode:
    support: full
    description: Reports what would be started, set or stopped without changing anything.
  diff_mode:
    support: full
    description: Shows the daemon's running state and defaults before and after.
  platform:
    support: full
    platforms: posix
    description: Linux with the NVIDIA driver.
options:
  state:
    description:
      - V(started) starts the daemon if needed and applies the defaults.
      - V(stopped) sends C(quit), waits for the daemon to exit and restores the compute mode this module changed.
      - V(restarted) always stops (if running) and starts it again.
    type: str
    choices: [started, stopped, restarted]
    default: started
  pipe_directory:
    description:
      - C(CUDA_MPS_PIPE_DIRECTORY) of the daemon; identifies it. Clients must use the same directory.
      - Created (mode 0755) if missing.
    type: path
    default: /tmp/nvidia-mps
  log_directory:
    description:
      - C(CUDA_MPS_LOG_DIRECTORY) of the daemon (C(control.log), C(server.log)). Created (mode 0755) if missing.
    type: path
    default: /var/log/nvidia-mps
  user:
    description:
      - Run the daemon as this user (through C(runuser)); the pipe and log directories are owned by it.
    type: str
  group:
    description:
      - Group for the daemon and its directories; defaults to the primary group of O(user).
    type: str
  multiuser:
    description:
      - Start the daemon with C(-M) (C(--multiuser-server)), which the 580 driver's help text lists as
        "Enable multi-user mode".
    type: bool
    default: false
  default_active_thread_percentage:
    description:
      - Default active thread percentage for MPS servers started afterwards, from 1 to 100. Omitted, left as it is.
    type: float
  default_device_pinned_mem_limit:
    description:
      - Default pinned device memory limit for MPS servers started afterwards, per device.
      - Keys are CUDA device ordinals as the daemon sees them (0 = the first of O(devices)) or device UUIDs;
        values a whole number of megabytes or gigabytes, such as V(512M) or V(20G).
      - Devices not listed are left as they are.
    type: dict
  default_client_priority:
    description:
      - Default client priority, V(0) (normal) or V(1) (below normal). A scheduling hint only.
    type: int
    choices: [0, 1]
  compute_mode:
    description:
      - V(exclusive_process) (recommended for MPS on whole GPUs) or V(default) sets the compute mode of the served
        GPUs (every GPU when O(devices) is omitted) through NVML before the daemon starts, and restores the original
        mode when O(state=stopped).
      - V(keep) never touches the compute mode. Required for MIG devices and for GPUs in MIG mode, where NVML refuses
        EXCLUSIVE_PROCESS.
    type: str
    choices: [exclusive_process, default, keep]
    default: keep
  binary:
    description:
      - Path of C(nvidia-cuda-mps-control). Default is to look it up on E(PATH), C(/usr/bin) and
        C(/usr/local/cuda/bin).
    type: path
  timeout:
    description:
      - Seconds to wait for the daemon to come up or to exit.
    type: int
    default: 15
notes:
  - The control binary exits 0 even when it rejects a command; the module parses every reply.
  - MPS serves one user at a time per daemon; servers for different users are serialized, not concurrent.
  - The daemon's defaults are lost when it stops; the gpuops.nvidia.mps role re-applies them at every start.
seealso:
  - name: NVIDIA Multi-Process Service
    description: NVIDIA's MPS documentation.
    link: https://docs.nvidia.com/deploy/mps/
"""

EXAMPLES = r"""
- name: One MPS daemon for GPUs 0 and 1, exclusive-process, 50% of the SMs and 20G per client by default
  gpuops.nvidia.nvidia_mps:
    pipe_directory: /run/nvidia-mps/gpu01
    log_directory: /var/log/nvidia-mps/gpu01
    devices: [0, 1]
    compute_mode: exclusive_process
    default_active_thread_percentage: 50
    default_device_pinned_mem_limit:
      0: 20G
      1: 20G

- name: One daemon for the MIG device at memory slice 4 of GPU 0 (survives the instance being recreated)
  gpuops.nvidia.nvidia_mps:
    pipe_directory: /run/nvidia-mps/gpu0-slice4
    log_directory: /var/log/nvidia-mps/gpu0-slice4
    devices: ["mig:0:4:0"]
    compute_mode: keep

- name: Report servers and clients without changing anything
  gpuops.nvidia.nvidia_mps:
    pipe_directory: /run/nvidia-mps/gpu01
    log_directory: /var/log/nvidia-mps/gpu01
  check_mode: true
  register: mps

- name: Stop it; the compute mode goes back to what it was
  gpuops.nvidia.nvidia_mps:
    pipe_directory: /run/nvidia-mps/gpu01
    log_directory: /var/log/nvidia-mps/gpu01
    state: stopped
"""

RETURN = r"""
error_kind:
  description:
    - On failure, a stable keyword for the cause, for example V(binary_missing), V(start_failed), V(mig_mode), V(invalid_argument).
    - Every module of this collection reports failures under this key.
  returned: failure
  type: str
  sample: start_failed
nvml_code:
  description: On failure, the nvmlReturn_t code when NVML answered the call that failed.
  returned: failure, when NVML answered
  type: int
  sample: 999
state:
  description: V(started) or V(stopped).
  returned: always
  type: str
  sample: started
running:
  description: Whether the daemon runs after this task (in check mode, whether it would).
  returned: always
  type: bool
  sample: true
pid:
  description: PID of the control daemon, from its pid file.
  returned: always
  type: int
  sample: 400
pipe_directory:
  description: The daemon's pipe directory.
  returned: always
  type: str
  sample: /run/nvidia-mps/gpu01
log_directory:
  description: The daemon's log directory.
  returned: always
  type: str
  sample: /var/log/nvidia-mps/gpu01
devices:
  description: The devices the daemon serves, resolved; empty when it sees every GPU.
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: GPU or MIG device UUID, as in C(CUDA_VISIBLE_DEVICES).
      type: str
    type:
      description: V(gpu) or V(mig).
      type: str
    index:
      description: NVML index of a GPU.
      type: int
    parent_uuid:
      description: UUID of a MIG device's GPU.
      type: str
    parent_index:
      description: NVML index of a MIG device's GPU.
      type: int
  sample: [{"uuid": "GPU-5b6a2e0c-0d4c-5b6a-8f0e-0e1c2d3b4a59", "type": "gpu", "index": 0, "parent_uuid": null,
            "parent_index": null}]
defaults:
  description: The daemon's defaults read back after this task (pinned limits only for the devices asked about).
  returned: when running
  type: dict
  sample: {"active_thread_percentage": 25.0, "device_pinned_mem_limit": {"0": "20G"}, "client_priority": 1}
servers:
  description: Running MPS servers and the PIDs of their clients.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: Server PID.
      type: int
    status:
      description: Server status as the daemon reports it (C(ACTIVE)).
      type: str
    clients:
      description: Client PIDs.
      type: list
      elements: int
    active_thread_percentage:
      description: The server's active thread percentage.
      type: float
  sample: [{"pid": 508, "status": "ACTIVE", "clients": [436], "active_thread_percentage": 25.0}]
client_environment:
  description:
    - Everything a client of this daemon (Slurm job, notebook, container) needs in its environment, unmodified.
    - C(CUDA_VISIBLE_DEVICES) names the daemon's devices by UUID whenever the daemon serves only some devices. A
      client without it still sees every GPU of the node, and CUDA initialisation fails when the MPS server serves
      fewer (seen on a two-GPU H200 node with one daemon per GPU).
    - C(CUDA_MPS_PINNED_DEVICE_MEM_LIMIT), C(CUDA_MPS_ACTIVE_THREAD_PERCENTAGE) and C(CUDA_MPS_CLIENT_PRIORITY) repeat
      the daemon's defaults when they are set.
  returned: when running
  type: dict
  sample: {"CUDA_MPS_PIPE_DIRECTORY": "/run/nvidia-mps/gpu01", "CUDA_MPS_LOG_DIRECTORY": "/var/log/nvidia-mps/gpu01",
           "CUDA_VISIBLE_DEVICES": "GPU-5b6a2e0c-0d4c-5b6a-8f0e-0e1c2d3b4a59"}
actions:
  description: What was done (or in check mode would be done), in order.
  returned: always
  type: list
  elements: str
  sample: ["start the MPS control daemon on /run/nvidia-mps/gpu01", "set the default active thread percentage from 100.0 to 25"]
log_tail:
  description: Last lines of C(control.log) when the daemon did not come up or did not stop.
  returned: on failure
  type: list
  elements: str
"""

import os

from ansible_collections.gpuops.nvidia.plugins.module_utils._module import finish, new_module
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps import MpsDaemon
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_spec import CONTROL_BINARY, MPS_SPEC, MpsError


def main():
    module = new_module(MPS_SPEC)
    params = module.params

    def run(argv, env=None, data=None):
        # binary_data: send `data` as is; run_command would append a newline, which the control reads as a command.
        return module.run_command(argv, data=data, binary_data=True, environ_update=env or {}, check_rc=False)

    def work():
        binary = params["binary"] or module.get_bin_path(CONTROL_BINARY, opt_dirs=["/usr/bin", "/usr/local/cuda/bin"])
        if binary and not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            if params["state"] != "stopped":
                raise MpsError("binary %s does not exist or is not executable" % binary, kind="binary_missing")
            binary = None
        daemon = MpsDaemon(dict(params), run, binary=binary, runuser=module.get_bin_path("runuser"),
                           check_mode=module.check_mode)
        return daemon.apply()

    finish(module, work)


if __name__ == "__main__":
    main()
