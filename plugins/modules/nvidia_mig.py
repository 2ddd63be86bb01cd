#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nvidia_mig
short_description: Declarative MIG layouts that change only what must change
version_added: 0.1.0
description:
  - Sets the MIG mode of NVIDIA GPUs and makes their GPU instances (GIs) and compute instances (CIs) match a
    layout given as mig-parted's map of MIG device profile to count, or a named config of a mig-parted v1
    config file.
  - Keeps every instance that already matches at its placement, destroys only what must go (the fewest
    instances that let the target fit), and creates the rest with explicit placements. The plan is
    deterministic.
  - Validates everything (profiles, fit, busy GPUs) on every selected GPU before the first change.
  - Atomic per GPU. If an NVML call fails part-way, what was created is destroyed and what was destroyed is
    recreated at its old placement (on Ampere, through another GPU reset when the run had reset the GPU); the
    error says per GPU whether it is back as it was, and otherwise what changed and what could not be confirmed.
    A GPU that changed is never reported with C(changed=false); one rolled back completely is.
  - Serialised with a host-wide lock so two runs never reconfigure GPUs at once.
  - On GPUs whose MIG mode change stays pending until a GPU reset (Ampere), resets the GPUs with
    C(nvidia-smi -r -i) when O(reset=if_needed) and no process uses them; otherwise reports
    RV(reset_required) and leaves the layout for the next run.
author:
  - gpuops.nvidia contributors (@gpuops)
requirements:
  - nvidia-ml-py
  - PyYAML, only for a O(config_file) written in YAML (one written as JSON, which is YAML too, needs none)
extends_documentation_fragment:
  - gpuops.nvidia.devices
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Computes and returns the plan without any NVML write.
  diff_mode:
    support: full
    details:
      - Shows a fixed-width map of each GPU's memory slices before and after, then which MIG devices are kept (same
        MIG UUID, their clients are not disturbed), destroyed and created.
  platform:
    platforms: posix
options:
  mode:
    description:
      - The MIG mode the selected GPUs should have.
      - Defaults to V(enabled) when O(layout) is given.
      - With V(disabled), every GPU and compute instance on the GPU is destroyed first; a non-empty O(layout)
        with V(disabled) is refused.
      - One of O(mode), O(layout) and O(config_file) is required.
    type: str
    choices: [enabled, disabled]
  layout:
    description:
      - 'MIG devices per profile, as in mig-parted, e.g. C({"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}).'
      - Profile names are those the GPU reports through NVML, including media-engine variants such as
        C(1g.10gb+me), C(1g.24gb-me), C(1g.24gb+gfx) or C(1g.24gb+me.all). An unknown name is an error that
        lists the profiles of that GPU.
      - 'A compute-instance-qualified profile such as C(1c.3g.40gb) asks for compute instances packed into
        shared GPU instances of that profile; C({"1c.3g.40gb": 3}) is one C(3g.40gb) GI holding three
        one-slice CIs. A plain C(3g.40gb) is a GI with one CI spanning it.'
      - Counts are positive whole numbers; leave a profile out to have none of it.
      - The layout is exact; instances not in it are destroyed. V({}) (or omitting it) sets the mode only and
        leaves instances alone.
    type: dict
  config_file:
    description:
      - A mig-parted v1 config file on the managed node (C(version) V(v1), C(mig-configs)), read as strictly as
        mig-parted reads it. Apply the config named O(config_name) to the GPUs each of its entries selects
        (by C(devices) and C(device-filter)), within O(devices) and O(device_filter).
      - Mutually exclusive with O(layout) and O(mode).
      - The file is read and validated, and O(config_name) checked against it, before any GPU is read. A file
        that cannot be read, is not UTF-8 text or is not valid fails with RV(error_kind) V(invalid_config). An
        entry's C(device-filter) must be PCI device ids, as O(device_filter) must.
      - RV(config_entries) says which GPUs each entry of the config selected; an entry that selects none is a
        warning that names it.
    type: path
  config_name:
    description:
      - The config of O(config_file) to apply. May be omitted when the file has only one. Requires
        O(config_file).
    type: str
  reset:
    description:
      - What to do when a MIG mode change stays pending until a GPU reset (Ampere GPUs).
      - V(if_needed) resets those GPUs with C(nvidia-smi -r -i BUS_IDS) once no process uses them, then applies
        the layout. If the reset fails (for example in a VM with GPU passthrough), RV(reboot_required) is set.
      - V(never) leaves the change pending, sets RV(reset_required) and does not apply the layout.
    type: str
    choices: [if_needed, never]
    default: if_needed
  allow_busy_kept_instances:
    description:
      - By default the module refuses to touch a GPU on which compute processes run when the plan destroys
        anything there. With V(true) it proceeds if the processes run only on instances the plan keeps.
      - Processes on instances that must be destroyed, or on a GPU whose mode must change, always stop the run.
    type: bool
    default: false
  lock_file:
    description:
      - The host-wide lock file. Defaults to E(GPUOPS_MIG_LOCK_FILE) or C(/run/gpuops-nvidia/mig.lock).
    type: path
  lock_timeout:
    description:
      - Seconds to wait for the host lock before failing (V(0) tries once).
    type: int
    default: 300
notes:
  - Needs root on the managed node (use become). Check mode only reads and works without root; it then warns that
    the real run needs root, and reads without the host lock when it cannot take it.
  - MIG devices that are recreated get new UUIDs; kept ones keep theirs.
  - GPU instances and compute instances do not survive a reboot or GPU reset, and on Hopper and later neither
    does the MIG mode. Apply the layout at boot, e.g. with this collection's mig role.
seealso:
  - module: gpuops.nvidia.nvidia_gpu_info
  - name: mig-parted
    description: NVIDIA's MIG partition editor, whose config format this module reads.
    link: https://github.com/NVIDIA/mig-parted
"""

EXAMPLES = r"""
- name: Three MIG devices on every H100
  gpuops.nvidia.nvidia_mig:
    device_filter: ["0x233010DE"]
    layout:
      3g.40gb: 1
      2g.20gb: 1
      1g.10gb: 1

- name: One 3g GPU instance shared by three compute instances, on GPU 0 only
  gpuops.nvidia.nvidia_mig:
    devices: [0]
    layout:
      1c.3g.40gb: 3

- name: Enable MIG without creating instances; never reset an Ampere GPU
  gpuops.nvidia.nvidia_mig:
    mode: enabled
    reset: never
  register: mig

- name: Tell the operator that a reset or reboot is due
  ansible.builtin.debug:
    msg: "MIG mode change pending on {{ inventory_hostname }}"
  when: mig.reset_required

- name: Apply a named config of a mig-parted config file
  gpuops.nvidia.nvidia_mig:
    config_file: /etc/nvidia-mig-manager/config.yaml
    config_name: all-balanced

- name: Show what would change, without changing anything
  gpuops.nvidia.nvidia_mig:
    layout: {"7g.80gb": 1}
  check_mode: true
  diff: true

- name: Disable MIG
  gpuops.nvidia.nvidia_mig:
    mode: disabled
"""

RETURN = r"""
error_kind:
  description:
    - On failure, a stable keyword for the cause, for example V(busy), V(invalid_argument), V(invalid_layout),
      V(unknown_profile), V(does_not_fit), V(invalid_config) (a O(config_file) that cannot be read or is not a
      valid mig-parted v1 config), V(invalid_selection), V(lock_timeout), V(pynvml_missing), V(no_permission).
    - Every module of this collection reports failures under this key.
  returned: failure
  type: str
  sample: busy
nvml_code:
  description:
    - On failure, the C(nvmlReturn_t) code (or MIG activation status) NVML answered with, when the failure
      came from NVML; absent when NVML was not asked or did not answer (invalid options, busy GPU, lock).
    - Every module of this collection reports it under this key.
  returned: failure, when NVML answered
  type: int
  sample: 19
gpus:
  description: One entry per GPU the run selected.
  returned: always
  type: list
  elements: dict
  contains:
    index:
      description: NVML index.
      type: int
    uuid:
      description: GPU UUID.
      type: str
    bus_id:
      description: PCI bus id.
      type: str
    name:
      description: Product name.
      type: str
    changed:
      description:
        - Whether this GPU was (or in check mode would be) changed. After a failure, false for a GPU that is as it
          was (untouched, or rolled back completely) and true for one that is not or could not be read back.
      type: bool
    confirmed:
      description:
        - False when the GPU could not be read back after its steps ran; RV(gpus[].after) is then the planned state.
      type: bool
    rolled_back:
      description: Present and true on a failure for a GPU whose steps were rolled back (see RV(rollback)).
      type: bool
    config_entry:
      description: With O(config_file), the name of the config whose entry gives this GPU's layout.
      type: str
    config_entry_index:
      description: With O(config_file), the position of that entry in the config.
      type: int
    mig_devices:
      description:
        - The MIG devices the plan keeps (C(kept), same MIG UUID), destroys (C(destroyed)) and creates (C(created)),
          each with C(profile), C(gpu_instance_profile), C(gpu_instance_id), C(gpu_instance_placement),
          C(compute_instance_id), C(placement) and C(uuid) (null for devices check mode would create). A GPU
          instance without compute instances is listed with a null C(placement).
        - Null on a failure for a GPU whose plan did not complete.
      type: dict
    reset_problem:
      description: Why a pending MIG mode could not be applied by a GPU reset.
      type: str
    before:
      description:
        - MIG mode, pending mode, devices per profile (C(devices)) and the GPU instances with their
          ids, profiles, placements and compute instances (ids, profiles, placements, MIG device UUIDs).
      type: dict
    after:
      description:
        - The same after the run; in check mode the prediction (ids and UUIDs of new instances null).
        - Null after a failure when the GPU could not be read back.
      type: dict
    plan:
      description: The steps for this GPU, in order (see RV(plan)).
      type: list
      elements: dict
    executed:
      description: The steps that ran; in check mode, the steps that would run.
      type: list
      elements: dict
    reset_required:
      description: A MIG mode change on this GPU waits for a GPU reset or reboot.
      type: bool
    reboot_required:
      description: The GPU could not be reset (or nvidia-smi is missing); reboot the node to apply the mode.
      type: bool
    layout_applied:
      description: False when the layout waits for a pending mode change.
      type: bool
    slice_map:
      description: One-line maps of the memory slices, C(before) and C(after).
      type: dict
  sample:
    - index: 0
      name: NVIDIA H100 80GB HBM3
      changed: true
      before: {mig_capable: true, mig_mode: enabled, mig_mode_pending: enabled, devices: {"7g.80gb": 1}}
      after: {mig_capable: true, mig_mode: enabled, mig_mode_pending: enabled,
              devices: {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}}
      reset_required: false
      reboot_required: false
plan:
  description:
    - Every step, for all GPUs, in execution order. Each has C(gpu), C(action) (C(destroy_compute_instance),
      C(destroy_gpu_instance), C(set_mig_mode), C(reset_gpu), C(create_gpu_instance),
      C(create_compute_instance)), C(description), and the profile, placement and ids the step concerns.
  returned: always
  type: list
  elements: dict
  sample:
    - gpu: 0
      action: create_gpu_instance
      profile: 3g.40gb
      placement: {start: 0, size: 4}
      description: "GPU 0: create GPU instance 3g.40gb at memory slices 0-3"
reset_required:
  description: Some GPU's MIG mode change waits for a GPU reset or reboot; its layout was not applied.
  returned: always
  type: bool
reboot_required:
  description: Some GPU could not be reset; a reboot applies the pending MIG mode.
  returned: always
  type: bool
rollback:
  description:
    - On failure, per GPU whose change was under way, C(gpu), C(restored) (true, false, or null when the GPU could
      not be read back), C(problems), C(steps), C(instances), C(recreated_devices) (MIG devices recreated, with new
      UUIDs) and C(command) (on Ampere, the GPU reset that finishes an unfinished rollback, else null).
  returned: when an NVML step failed
  type: list
  elements: dict
failed_gpu:
  description: On failure, the index of the GPU whose step failed (null when it failed in the GPU reset).
  returned: when an NVML step failed
  type: int
refused:
  description: When the layout was refused before any change, each refused GPU (C(gpu)) with its C(error_kind).
  returned: when a GPU refused the target
  type: list
  elements: dict
config_entries:
  description:
    - With O(config_file), per entry of the config, C(entry) (its position), C(device_filter), C(devices),
      C(mig_enabled) and C(selected), the indices of the GPUs it selected.
  returned: with config_file
  type: list
  elements: dict
  sample:
    - {entry: 0, device_filter: ["0x233010DE"], devices: all, mig_enabled: true, selected: [0, 1]}
    - {entry: 1, device_filter: ["0x20B010DE"], devices: all, mig_enabled: true, selected: []}
"""

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
from ansible_collections.gpuops.nvidia.plugins.module_utils._module import finish, new_module
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession
from ansible_collections.gpuops.nvidia.plugins.module_utils._mig import (
    MIG_SPEC,
    HostLock,
    Options,
    apply,
    select_targets,
    validate_desired,
)


def main():
    module = new_module(MIG_SPEC)

    def work():
        desired = validate_desired(module.params)
        options = Options.from_desired(desired, check_mode=module.check_mode, run_command=module.run_command,
                                       nvidia_smi=module.get_bin_path("nvidia-smi"))
        with HostLock(desired["lock_file"], desired["lock_timeout"], required=not module.check_mode) as lock:
            with NvmlSession() as session:
                selection = select_targets(session, desired)
                report = selection.report()
                report["warnings"] = ([lock.warning()] if lock.warning() else []) + report["warnings"]
                try:
                    result = apply(session, selection.targets, options)
                except GpuopsError as exc:
                    # a failure still says what the config entries selected, and warns
                    for warning in report.pop("warnings"):
                        module.warn(warning)
                    exc.details.update(report)
                    raise
        report["warnings"] += result.pop("warnings", [])
        result.update(report)
        return result

    finish(module, work)


if __name__ == "__main__":
    main()
