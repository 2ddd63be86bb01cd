#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nvidia_nvshare_instances
short_description: Plan and validate nvshare schedulers (one per GPU) and their client services on a node, changing nothing
version_added: 0.1.0
description:
  - Validates the desired state of the C(gpuops.nvidia.nvshare) role on the node, before the role changes anything,
    and reports every problem at once with what is valid.
  - Resolves the GPUs that get an nvshare scheduler (O(devices), O(device_filter)) through NVML, refuses GPUs in MIG
    mode (unless O(allow_mig)) and GPUs that an MPS daemon of the C(gpuops.nvidia.mps) role serves, read from its
    desired states C(<mps_config_dir>/daemon/*.json) (unless O(allow_mps)), and resolves each client service to
    the GPU it is bound to.
  - Returns each scheduler's systemd instance, directory, socket and environment, each client's environment and
    socket binding, what the installation needs, and what runs now - whether a scheduler needs a restart (its
    start-time settings or binary changed) or only its TQ and anti-thrash mode applied again, and which client
    services still run without their wiring.
  - nvshare compiles one socket path into its scheduler, client library and nvsharectl,
    C(/var/run/nvshare/scheduler.sock). One scheduler per GPU works because each scheduler instance and each client
    service gets C(/run/nvshare/<GPU UUID>) bound over C(/run/nvshare) in its own mount namespace.
  - Read-only; never reports a change.
author:
  - gpuops.nvidia contributors (@gpuops)
extends_documentation_fragment:
  - gpuops.nvidia.devices
attributes:
  check_mode:
    support: full
    description: Runs the same in check mode; it never changes anything.
  diff_mode:
    support: none
    description: It changes nothing, so there is nothing to show.
  platform:
    support: full
    platforms: posix
    description: Linux with systemd and the NVIDIA driver.
options:
  state:
    description:
      - V(present) plans the schedulers and clients; V(absent) only lists what the role installed on the node
        (scheduler instances and client drop-ins) so that it can be removed, and needs no GPU.
    type: str
    choices: [present, absent]
    default: present
  install_method:
    description:
      - V(release) installs built files (nvshare's release tarball, or a tarball or directory of your own build).
      - V(source) builds nvshare on the node from a source tarball of its repository (C(src/Makefile)), for nodes
        whose glibc is older than the release binaries need.
    type: str
    choices: [release, source]
    default: release
  archive:
    description:
      - A URL (C(https://), C(http://), C(ftp://)), downloaded on the node, or an absolute path on the controller -
        a tarball, or with O(install_method=release) a directory holding C(libnvshare.so), C(nvshare-scheduler)
        and C(nvsharectl).
      - Required when O(state=present).
    type: str
  archive_checksum:
    description: C(sha256:<64 hex digits>) of the tarball; required unless O(archive) is a directory.
    type: str
  file_checksums:
    description: For a directory O(archive), C(sha256:<64 hex digits>) of each of C(libnvshare.so),
      C(nvshare-scheduler) and C(nvsharectl).
    type: dict
    default: {}
  archive_facts:
    description:
      - What the controller found at a path O(archive), filled in by the role's preflight - C(exists), C(isdir),
        C(checksum) (sha256 hex of a file) and for a directory C(files) (per file, C(exists) and C(checksum)).
        Compared with O(archive_checksum) and O(file_checksums).
    type: dict
    default: {}
  release_min_glibc:
    description: The glibc version the release binaries need; a node with an older glibc is refused with
      O(install_method=release).
    type: str
    default: "2.34"
  prefix:
    description: Installation prefix (C(lib/libnvshare.so), C(sbin/nvshare-scheduler), C(bin/nvsharectl)).
    type: path
    default: /usr/local
  cache_dir:
    description: Where downloads, unpacked releases and source builds go on the node.
    type: path
    default: /var/cache/gpuops-nvshare
  default_device:
    description:
      - The GPU (index, UUID or PCI bus id) whose scheduler also answers at nvshare's own path on the host,
        C(/var/run/nvshare/scheduler.sock), for clients that are not bound to a GPU (C(/etc/ld.so.preload), a shell).
        It is also the GPU of client items without a C(device).
      - Default the first scheduled GPU.
    type: raw
  tq:
    description: The schedulers' time quantum in seconds (C(nvsharectl -T)), 1 to 86400.
    type: int
    default: 30
  anti_thrash:
    description: The schedulers' anti-thrashing mode (C(nvsharectl -S on|off)).
    type: bool
    default: true
  debug:
    description: Run the schedulers with C(NVSHARE_DEBUG=1).
    type: bool
    default: false
  clients:
    description:
      - Services whose processes run under nvshare. Each item takes C(service) (required, a systemd service name),
        C(device) (the GPU, default O(default_device)), C(single_oversub) (C(NVSHARE_ENABLE_SINGLE_OVERSUB=1),
        default O(single_oversub)) and C(restart) (the role restarts the service when it is running without its
        wiring; default false).
      - The service must exist on the node.
    type: list
    elements: dict
    default: []
  single_oversub:
    description: Default of the clients' C(single_oversub).
    type: bool
    default: false
  ld_so_preload:
    description: Whether C(libnvshare.so) goes into C(/etc/ld.so.preload) (every process of the node).
    type: bool
    default: false
  allow_mig:
    description: Give a scheduler to selected GPUs in MIG mode anyway (with a warning).
    type: bool
    default: false
  allow_mps:
    description: Give a scheduler to GPUs that an MPS daemon of the mps role serves anyway (not checked).
    type: bool
    default: false
  mps_config_dir:
    description: The mps role's configuration directory (its daemons' desired states are in C(daemon/*.json)).
    type: path
    default: /etc/gpuops/mps
  timeout:
    description: Seconds the scheduler units' helper waits for a scheduler to listen before nvsharectl gives up.
    type: int
    default: 30
seealso:
  - module: gpuops.nvidia.nvidia_mps_instances
  - name: nvshare
    description: Practical GPU sharing without memory size constraints.
    link: https://github.com/grgalex/nvshare
"""

EXAMPLES = r"""
- name: Validate nvshare on every GPU and bind JupyterHub to GPU 1, before the role changes anything
  gpuops.nvidia.nvidia_nvshare_instances:
    archive: https://github.com/grgalex/nvshare/releases/download/v0.1.1/nvshare-v0.1.1.tar.gz
    archive_checksum: "sha256:{{ nvshare_release_sha256 }}"
    tq: 60
    clients:
      - service: jupyterhub
        device: 1
  register: nvshare_plan
"""

RETURN = r"""
config:
  description: The validated desired state, in this module's options (what the role writes to C(nvshare.json)).
  returned: success
  type: dict
install:
  description: The installation plan (C(kind) url, file or directory; C(download), C(staging), C(build_dir), each
    file's installed C(path) and C(mode); the node's C(glibc)). Null when O(state=absent).
  returned: success
  type: dict
schedulers:
  description: One per scheduled GPU, in index order.
  returned: success
  type: list
  elements: dict
  contains:
    instance:
      description: The systemd instance name, the GPU's UUID.
      type: str
    unit:
      description: C(nvshare-scheduler@<UUID>.service).
      type: str
    gpu:
      description: C(index), C(uuid), C(bus_id), C(name).
      type: dict
    default:
      description: Whether this scheduler also answers at C(/var/run/nvshare/scheduler.sock) on the host.
      type: bool
    directory:
      description: C(/run/nvshare/<UUID>), bound over C(/run/nvshare) for the scheduler and its clients.
      type: str
    socket:
      description: The socket's path on the host.
      type: str
    environment:
      description: The scheduler's environment (C(CUDA_VISIBLE_DEVICES), C(NVSHARE_DEBUG) with O(debug)).
      type: dict
    clients:
      description: The client services bound to this GPU.
      type: list
      elements: str
    running:
      description: Whether the unit runs now.
      type: bool
    pid:
      description: Its main pid, when it runs.
      type: int
    applied:
      description: What the unit's helper applied through nvsharectl (C(pid), C(tq), C(anti_thrash), C(applied_at)).
      type: dict
    restart_needed:
      description: Whether the running scheduler was started with other settings or its binary was replaced.
      type: bool
    drift:
      description: What differs, when restart_needed.
      type: list
      elements: str
    configure_needed:
      description: Whether TQ and anti-thrash must be applied again (no record for the running pid, or other values).
      type: bool
  sample: [{"instance": "GPU-5b6a2e0c-0d4c-5b6a-8f0e-0e1c2d3b4a59", "default": true, "running": true, "pid": 812,
            "socket": "/run/nvshare/GPU-5b6a2e0c-0d4c-5b6a-8f0e-0e1c2d3b4a59/scheduler.sock",
            "applied": {"pid": 812, "tq": 30, "anti_thrash": "on", "applied_at": 1795413140},
            "restart_needed": false, "drift": [], "configure_needed": false}]
default_device:
  description: The UUID of the GPU whose scheduler answers at nvshare's own path on the host.
  returned: success
  type: str
clients:
  description: The client services, with C(service), C(gpu), C(instance), C(unit), C(environment) (C(LD_PRELOAD),
    C(CUDA_VISIBLE_DEVICES), C(NVSHARE_ENABLE_SINGLE_OVERSUB)), C(bind) (C(source), C(target)), C(restart), and what
    runs now - C(active), C(pid), C(restart_needed), C(drift).
  returned: success
  type: list
  elements: dict
stale_schedulers:
  description: Scheduler instances on the node that the desired state no longer has (all of them with O(state=absent)).
  returned: success
  type: list
  elements: str
stale_clients:
  description: Services that carry the role's drop-in but are no longer clients, with C(active) and C(pid).
  returned: success
  type: list
  elements: dict
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
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvshare import NVSHARE_SPEC
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvshare_plan import plan


def main():
    module = new_module(NVSHARE_SPEC)

    def run(argv):
        return module.run_command(argv, check_rc=False)

    finish(module, lambda: plan(module.params, run))


if __name__ == "__main__":
    main()
