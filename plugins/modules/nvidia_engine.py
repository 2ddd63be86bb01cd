#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nvidia_engine
short_description: Install the collection's plain-Python engine on the node, in one module run
version_added: 0.1.0
description:
  - Installs the collection's engine, every C(plugins/module_utils/_*.py) except C(_module.py) (the only one that
    imports Ansible), as the importable package
    C(<lib_dir>/ansible_collections/gpuops/nvidia/plugins/module_utils/), for the helpers that the roles run on the
    node without Ansible (C(gpuops-mig-apply) of the C(gpuops.nvidia.mig) role, the systemd helpers of the
    C(gpuops.nvidia.mps) and C(gpuops.nvidia.nvshare) roles). They put O(lib_dir) on C(sys.path) and run the same
    code as the modules.
  - The engine files travel inside this module's own payload (AnsiballZ ships every module_utils file a module
    imports, and this module imports all of the engine); the module reads them back and writes the tree, so the
    whole install is one module run instead of one C(copy) per file.
  - Creates the package directories (mode 0755) with an empty C(__init__.py) each, and writes the engine files
    (mode 0644), all owned by root, only where the content, mode or owner differs; files are written to a temporary
    file and renamed into place, so a helper never imports a half-written file.
  - Removes C(_*.py) files of the engine directory that are no longer part of the engine, with their
    C(__pycache__) entries.
  - Needs root (use C(become=true)).
  - The C(gpuops.nvidia.engine) role runs it; the other roles include that role.
author:
  - gpuops.nvidia contributors (@gpuops)
options:
  lib_dir:
    description:
      - Where the engine goes; the engine files end up in
        C(<lib_dir>/ansible_collections/gpuops/nvidia/plugins/module_utils/). An absolute path.
    type: path
    default: /usr/local/lib/gpuops-nvidia
attributes:
  check_mode:
    support: full
    description: Reports which files would be added, updated or removed; writes nothing.
  diff_mode:
    support: full
    description: Lists each file added, updated or removed (or given its mode or owner back), with mode, owner and
      content hash before and after.
  platform:
    support: full
    platforms: posix
    description: Any POSIX node with Python; the helpers that use the engine need Linux with the NVIDIA driver.
notes:
  - The engine installed is the one of the collection on the controller that runs the task.
"""

EXAMPLES = r"""
- name: Install the engine where the mig and mps roles' helpers look for it
  gpuops.nvidia.nvidia_engine:
    lib_dir: /usr/local/lib/gpuops-nvidia
  become: true

- name: Check (without changing anything) that the engine on the node is the controller's
  gpuops.nvidia.nvidia_engine:
  check_mode: true
  become: true
  register: engine
  failed_when: engine is changed
"""

RETURN = r"""
lib_dir:
  description: The normalized O(lib_dir).
  returned: success
  type: str
  sample: /usr/local/lib/gpuops-nvidia
engine_dir:
  description: The directory that holds the engine files.
  returned: success
  type: str
  sample: /usr/local/lib/gpuops-nvidia/ansible_collections/gpuops/nvidia/plugins/module_utils
files:
  description:
    - Every path (relative to O(lib_dir)) that was added, updated, removed or given its mode or owner back; in
      check mode, what would be. Empty when the engine on the node is already the controller's.
  returned: success
  type: list
  elements: dict
  contains:
    path:
      description: Path relative to O(lib_dir).
      type: str
      sample: ansible_collections/gpuops/nvidia/plugins/module_utils/_mig.py
    action:
      description: V(added), V(updated) (content), V(attributes) (mode or owner only), or V(removed).
      type: str
      sample: updated
engine:
  description: The engine this module carries.
  returned: success
  type: dict
  contains:
    sha256:
      description: sha256 over the engine's file names and contents; the same collection gives the same hash.
      type: str
      sample: 3f7c0e4c3a5d0d3f1b9e7a8f2c6d4b1a0e9f8d7c6b5a4e3d2c1b0a9f8e7d6c5b
    files:
      description: The engine's file names.
      type: list
      elements: str
      sample: [_contract.py, _mig.py, _nvml.py]
error_kind:
  description:
    - On failure, a stable keyword for the cause, V(no_permission), V(directory) (a path of the tree exists as
      something else), V(io_error), V(invalid_argument) or V(engine_source).
    - Every module of this collection reports failures under this key.
  returned: failure
  type: str
  sample: no_permission
"""

# Every engine module, imported by name so that AnsiballZ puts each one in this module's payload (it ships what a
# module imports, not what it reads). tests/unit/plugins/modules/test_nvidia_engine.py fails when a
# plugins/module_utils/_*.py file (but _module.py) is missing here.
from ansible_collections.gpuops.nvidia.plugins.module_utils import (  # noqa: F401
    _contract,
    _driver,
    _driver_apt,
    _driver_hardware,
    _driver_packages,
    _engine_install,
    _gpu_info,
    _host,
    _mig,
    _mig_config,
    _mig_plan,
    _mps,
    _mps_control,
    _mps_defaults,
    _mps_devices,
    _mps_instances,
    _mps_spec,
    _nvml,
    _nvshare,
    _nvshare_plan,
    _persistence,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._module import finish, new_module

ENGINE = (
    _contract,
    _driver,
    _driver_apt,
    _driver_hardware,
    _driver_packages,
    _engine_install,
    _gpu_info,
    _host,
    _mig,
    _mig_config,
    _mig_plan,
    _mps,
    _mps_control,
    _mps_defaults,
    _mps_devices,
    _mps_instances,
    _mps_spec,
    _nvml,
    _nvshare,
    _nvshare_plan,
    _persistence,
)


def main():
    module = new_module(_engine_install.ENGINE_SPEC)

    def work():
        sources = _engine_install.engine_sources(ENGINE)
        return _engine_install.ensure(module.params, sources, check_mode=module.check_mode)

    finish(module, work)


if __name__ == "__main__":
    main()
