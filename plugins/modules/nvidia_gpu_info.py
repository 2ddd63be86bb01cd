#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nvidia_gpu_info
short_description: Gather facts about NVIDIA GPUs through NVML
version_added: 0.1.0
description:
  - Reads driver, NVML and CUDA driver versions and, per GPU, identity, memory, architecture, persistence
    and compute mode, MIG capability and mode, supported MIG profiles with their placements, the GPU and
    compute instances that exist, the compute processes that run, the GPU's NVLink fabric registration
    (NVSwitch systems) and the state of each NVLink link.
  - Sets them as the facts C(nvidia_gpus) and C(nvidia_driver).
  - Read-only; safe on a production node and in check mode.
author:
  - gpuops.nvidia contributors (@gpuops)
extends_documentation_fragment:
  - gpuops.nvidia.devices
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
options:
  gather:
    description:
      - What to read beyond the basic per-GPU facts, which are always read.
      - V(mig_profiles) lists the MIG profiles each GPU supports, V(mig_instances) the GPU and compute
        instances that exist, V(processes) the running compute processes, V(nvlink) the state of each NVLink
        link (one NVML call per link). V(all) reads everything; V(min) only the basic facts.
      - The NVLink fabric registration (RV(gpus[].fabric)) is a basic fact (one NVML call per GPU).
    type: list
    elements: str
    choices: [all, min, mig_profiles, mig_instances, processes, nvlink]
    default: [all]
  allow_missing:
    description:
      - On a host without the NVIDIA driver, without a GPU, or without nvidia-ml-py, return empty facts
        and the reason in RV(unavailable_reason) instead of failing.
      - Useful when one play gathers facts across GPU and non-GPU hosts.
    type: bool
    default: false
notes:
  - One NVML session per run (about 10 ms with persistence enabled on an H100; see docs/hardware).
seealso:
  - module: gpuops.nvidia.nvidia_mig
  - module: gpuops.nvidia.nvidia_persistence
"""

EXAMPLES = r"""
- name: Gather GPU facts
  gpuops.nvidia.nvidia_gpu_info:

- name: Print each GPU
  ansible.builtin.debug:
    msg: "{{ item.index }} {{ item.name }} {{ item.uuid }} MIG={{ item.mig.current }}"
  loop: "{{ ansible_facts.nvidia_gpus }}"

- name: Only the H100s, basic facts only
  gpuops.nvidia.nvidia_gpu_info:
    device_filter: ["0x233010DE"]
    gather: [min]

- name: Every GPU of an NVSwitch node must be registered in the NVLink fabric with all links up
  ansible.builtin.assert:
    that:
      - item.fabric.state == 'completed' and item.fabric.status == 'success'
      - item.nvlink.active_links == item.nvlink.links | length
    fail_msg: "GPU {{ item.index }}: fabric {{ item.fabric.state }}/{{ item.fabric.status }}, {{ item.nvlink.active_links }} active links"
  loop: "{{ ansible_facts.nvidia_gpus | selectattr('fabric.supported') | list }}"
  loop_control:
    label: "GPU {{ item.index }}"

- name: Gather where GPUs may be absent (mixed inventory)
  gpuops.nvidia.nvidia_gpu_info:
    allow_missing: true
  register: gpu_info

- name: Skip hosts without GPUs
  ansible.builtin.meta: end_host
  when: gpu_info.unavailable_reason is not none
"""

RETURN = r"""
error_kind:
  description:
    - On failure, a stable keyword for the cause, for example V(library_missing), V(driver_not_loaded), V(gpu_lost), V(invalid_selection).
    - Every module of this collection reports failures under this key.
  returned: failure
  type: str
  sample: library_missing
nvml_code:
  description: On failure, the nvmlReturn_t code when NVML answered the call that failed.
  returned: failure, when NVML answered
  type: int
  sample: 999
driver:
  description: Driver, NVML and CUDA driver versions (empty when unavailable).
  returned: always
  type: dict
  sample: {"version": "580.159.04", "nvml_version": "13.580.159.04", "cuda_driver_version": "13.0"}
gpus:
  description: One entry per selected GPU, in index order.
  returned: always
  type: list
  elements: dict
  contains:
    index: {description: NVML index., type: int, returned: always, sample: 0}
    uuid: {description: GPU UUID., type: str, returned: always, sample: GPU-7a66f036-ab04-e93b-c0c8-a668c2ffe980}
    name: {description: Product name., type: str, returned: always, sample: NVIDIA H100 80GB HBM3}
    pci_bus_id: {description: PCI bus id., type: str, returned: always, sample: "00000000:18:00.0"}
    pci_device_id: {description: PCI device and vendor id in mig-parted's form., type: str, returned: always,
                    sample: "0x233010DE"}
    pci_subsystem_id: {description: PCI subsystem id., type: str, returned: always, sample: "0x16C110DE"}
    memory_total_mib: {description: Total memory in MiB., type: int, returned: always, sample: 81559}
    memory_total_bytes: {description: Total memory in bytes., type: int, returned: always, sample: 85520809984}
    architecture: {description: Architecture name., type: str, returned: always, sample: hopper}
    compute_capability: {description: CUDA compute capability., type: str, returned: always, sample: "9.0"}
    persistence_mode: {description: Whether persistence mode is on (null if not supported)., type: bool,
                       returned: always, sample: true}
    compute_mode:
      description: Compute mode (null if not supported).
      type: str
      returned: always
      sample: default
    mig:
      description:
        - MIG state. C(current) and C(pending) are V(enabled), V(disabled), or null on GPUs without MIG;
          they differ while a mode change waits for a GPU reset.
        - C(profiles) (with O(gather) V(mig_profiles)) lists name, id, index, slices, memory_mib,
          max_instances, engine counts and placements (start, size in memory slices).
        - C(gpu_instances) (with O(gather) V(mig_instances)) lists id, profile, profile_id, placement and
          compute_instances (id, profile, profile_id, slices, placement, uuid of the MIG device).
      type: dict
      returned: always
      sample:
        capable: true
        current: enabled
        pending: enabled
        resetless_supported: true
        gpu_instances:
          - id: 1
            profile: 3g.40gb
            profile_id: 9
            placement: {start: 0, size: 4}
            compute_instances:
              - {id: 0, profile: 3g.40gb, profile_id: 2, slices: 3, placement: {start: 0, size: 3},
                 uuid: MIG-3c7a0a6e-2c4b-5e55-9f3c-1b1d3a6a1f00}
    fabric:
      description:
        - The GPU's registration in an NVLink fabric (an NVSwitch system, where the fabric manager registers
          each GPU), as C(nvmlDeviceGetGpuFabricInfoV) (or C(nvmlDeviceGetGpuFabricInfo) on drivers before 550)
          reports it.
        - C(supported) is true when NVML answered with a state other than V(not_supported), that is when the GPU
          takes part in a fabric; false on GPUs before Hopper, on a Hopper GPU without NVSwitches, and on a driver
          without the call.
        - C(state) is V(not_supported), V(not_started), V(in_progress) or V(completed) (null when NVML did not
          answer). Only a V(completed) state means the GPU can use the fabric; V(not_started) or V(in_progress)
          on an NVSwitch node usually means the fabric manager is not running or has not finished.
        - C(status) is the registration's result, V(success) or an error keyword such as V(not_supported),
          V(insufficient_resources) or V(unknown_error), with the nvmlReturn_t in C(status_code); NVML defines it
          only when C(state) is V(completed) and reports it as it is otherwise.
        - C(clique_id) and C(cluster_uuid) identify the NVLink domain (GPUs with the same pair can reach each
          other over NVLink); reported as NVML gives them, an all-zero UUID included.
        - C(nvml_error) is the error keyword when NVML did not answer (V(not_supported), V(function_not_found),
          ...), else null; the other keys are then null and C(supported) false.
      type: dict
      returned: always
      sample:
        supported: true
        state: completed
        status: success
        status_code: 0
        clique_id: 1
        cluster_uuid: 34816edd-3b6e-5f89-5a0b-d4ca1f7d3005
        nvml_error: null
    nvlink:
      description:
        - NVLink links (with O(gather) V(nvlink)), as C(nvmlDeviceGetNvLinkState) reports them from link 0 up to
          the first link number NVML says does not exist.
        - C(links) lists C(link) (number) and C(active) (true when the link is up; null when NVML answered that
          link with an unexpected error). C(active_links) counts the active ones.
        - C(supported) is false, C(links) empty and C(active_links) null when the GPU has no NVLink (link 0
          gets NOT_SUPPORTED) or the driver lacks the call.
        - C(ended_by) is the error keyword of the answer that ended the walk (V(invalid_argument) or
          V(not_supported) past the last link, V(function_not_found)); null when every link number answered.
      type: dict
      returned: when gathered
      sample:
        supported: true
        active_links: 18
        links: [{link: 0, active: true}, {link: 1, active: true}, {link: 17, active: true}]
        ended_by: invalid_argument
    processes:
      description: Running compute processes (with O(gather) V(processes)).
      type: list
      elements: dict
      returned: when gathered
      sample: [{pid: 4242, name: python3, used_gpu_memory: 536870912, gpu_instance_id: null,
                compute_instance_id: null}]
unavailable_reason:
  description: Why no GPU could be read, when O(allow_missing=true) and none could; otherwise null.
  returned: always
  type: str
  sample: "libnvidia-ml.so.1 not found: is the NVIDIA driver installed?"
ansible_facts:
  description: The same data as facts.
  returned: always
  type: dict
  contains:
    nvidia_gpus: {description: Same as RV(gpus)., type: list, elements: dict, returned: always}
    nvidia_driver: {description: Same as RV(driver)., type: dict, returned: always}
"""

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
from ansible_collections.gpuops.nvidia.plugins.module_utils._gpu_info import (
    GPU_INFO_SPEC,
    UNAVAILABLE_KINDS,
    gather,
    subsets_of,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._module import finish, new_module
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession


def main():
    module = new_module(GPU_INFO_SPEC)
    params = module.params

    def work():
        try:
            with NvmlSession() as session:
                found = gather(session, params["devices"], params["device_filter"], subsets_of(params["gather"]))
        except GpuopsError as exc:
            if not (params["allow_missing"] and exc.kind in UNAVAILABLE_KINDS):
                raise
            found = {"driver": {}, "gpus": [], "unavailable_reason": exc.message}
        warnings = []
        if params["device_filter"] and not found["gpus"] and not found.get("unavailable_reason"):
            warnings.append("device_filter %s matched no GPU on this host" % ", ".join(params["device_filter"]))
        return {"changed": False, "driver": found["driver"], "gpus": found["gpus"],
                "unavailable_reason": found.get("unavailable_reason"), "warnings": warnings,
                "ansible_facts": {"nvidia_gpus": found["gpus"], "nvidia_driver": found["driver"]}}

    finish(module, work)


if __name__ == "__main__":
    main()
