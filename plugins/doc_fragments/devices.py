# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  devices:
    description:
      - Which GPUs to act on.
      - V(all), or a list of GPU indices, GPU UUIDs (C(GPU-...)) and PCI bus ids (C(00000000:18:00.0),
        C(18:00.0) or C(0000:18:00)).
      - Indices follow NVML's enumeration, which can change across reboots; UUIDs and bus ids do not.
      - Selecting one GPU twice, or a GPU that does not exist, is an error that lists the GPUs of the host.
    type: raw
    default: all
  device_filter:
    description:
      - Keep only the selected GPUs whose PCI device id is in this list, in mig-parted's form
        C(0xDDDDVVVV) (device id, then vendor id C(10DE)), e.g. C(0x233010DE) for H100 80GB HBM3,
        optionally with C(:0xSSSSVVVV) for the subsystem id.
      - A filter that matches no GPU of the host selects nothing, so one play can target a mixed fleet;
        the result then says so in a warning.
    type: list
    elements: str
requirements:
  - nvidia-ml-py (imported as C(pynvml)) on the managed node
  - the NVIDIA driver (C(libnvidia-ml.so.1)) on the managed node
"""
