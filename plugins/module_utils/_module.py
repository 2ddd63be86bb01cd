# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The Ansible side of every module: build AnsibleModule from an engine's spec, run the engine, report.

The only file in module_utils that imports Ansible; the engines stay plain Python for the roles' helpers.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError, argument_spec


def new_module(*specs, **kwargs):
    """AnsibleModule over the engine's argument spec (each option defined once, in the engine)."""
    kwargs.setdefault("supports_check_mode", True)
    return AnsibleModule(argument_spec=argument_spec(*specs), **kwargs)


def finish(module, work):
    """Run `work()` -> result dict and exit; any GpuopsError becomes the one failure payload.

    The result's `warnings` become Ansible warnings; its `diff` is returned only in diff mode.
    """
    try:
        result = work()
    except GpuopsError as exc:
        module.fail_json(**exc.payload())
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    module.exit_json(**result)
