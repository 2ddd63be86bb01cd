# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""An MPS daemon's devices and the compute mode of its GPUs. Plain Python.

Devices are resolved only here, through the NVML seam, at run time on the node. The compute mode is changed
only when asked (`compute_mode` not `keep`); the original mode is recorded in a small state file in the pipe
directory before the first write, and put back when the daemon stops.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_spec import MpsError, selects_devices
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import COMPUTE_MODES, NvmlError

STATE_FILE = ".gpuops-mps-state.json"
COMPUTE_MODE_VALUES = {"default": 0, "exclusive_process": 3}


class DaemonDevices:
    """Resolves the daemon's devices and keeps its GPUs' compute mode; appends to the caller's actions/warnings."""

    def __init__(self, config, nvml_factory, check_mode, actions, warnings):
        self.config = config
        self.nvml_factory = nvml_factory
        self.check_mode = check_mode
        self.actions = actions
        self.warnings = warnings
        self.state_path = os.path.join(config["pipe_directory"], STATE_FILE)

    def needs_nvml(self):
        return selects_devices(self.config) or self.config["compute_mode"] != "keep"

    def resolve(self):
        """[{uuid, type (gpu|mig), index, parent_uuid, parent_index}]; [] when the daemon sees every GPU."""
        if not self.needs_nvml():
            return []
        with self.nvml_factory() as nvml:
            resolved = nvml.resolve_devices(self.config["devices"], self.config.get("device_filter"), allow_mig=True) \
                if selects_devices(self.config) else []
            if selects_devices(self.config) and not resolved:
                raise MpsError("devices %s with device_filter %s select no device on this node: %s"
                               % (self.config["devices"], self.config.get("device_filter"), nvml.inventory()),
                               kind="invalid_selection")
            if self.config["compute_mode"] != "keep":
                self._check_compute_mode_targets(nvml, resolved)
        return resolved

    def _check_compute_mode_targets(self, nvml, resolved):
        mig = [d["uuid"] for d in resolved if d["type"] == "mig"]
        if mig:
            raise MpsError("compute_mode %s cannot be applied to MIG devices (%s): NVML refuses EXCLUSIVE_PROCESS "
                           "on GPUs in MIG mode, where MPS runs one daemon per MIG device; use compute_mode: keep"
                           % (self.config["compute_mode"], ", ".join(mig)), kind="mig_mode")
        if not resolved:
            in_mig = [gpu for gpu in nvml.select("all") if (nvml.mig_mode(gpu) or (0, 0))[0]]
            if in_mig:
                raise MpsError("compute_mode %s cannot be applied: %s in MIG mode, where NVML refuses "
                               "EXCLUSIVE_PROCESS and MPS runs one daemon per MIG device; list the GPUs this daemon "
                               "serves in devices, or use compute_mode: keep"
                               % (self.config["compute_mode"], ", ".join(g.describe() for g in in_mig)
                                  + (" is" if len(in_mig) == 1 else " are")), kind="mig_mode")

    def _targets(self, nvml, devices):
        if devices:
            return [nvml.find(d["uuid"]) for d in devices if d["type"] == "gpu"]
        return nvml.select("all")

    def apply_compute_mode(self, devices):
        if self.config["compute_mode"] == "keep":
            return
        wanted = COMPUTE_MODE_VALUES[self.config["compute_mode"]]
        record = self.read_state()
        with self.nvml_factory() as nvml:
            for gpu in self._targets(nvml, devices):
                current = nvml.compute_mode(gpu)
                if current == wanted:
                    continue
                self.actions.append("set the compute mode of %s from %s to %s"
                                    % (gpu.describe(), COMPUTE_MODES.get(current, current), COMPUTE_MODES[wanted]))
                if self.check_mode:
                    continue
                record.setdefault("compute_mode", {}).setdefault(gpu.uuid, {"original": current})["set"] = wanted
                self.write_state(record)
                nvml.call("nvmlDeviceSetComputeMode", gpu.handle, wanted, what="set the compute mode to %s"
                          % COMPUTE_MODES[wanted], gpu=gpu)

    def restore_compute_mode(self):
        modes = self.read_state().get("compute_mode") or {}
        if modes:
            with self.nvml_factory() as nvml:
                for uuid, entry in sorted(modes.items()):
                    try:
                        gpu = nvml.find(uuid)
                    except NvmlError:
                        self.warnings.append("GPU %s is gone: its compute mode was not restored" % uuid)
                        continue
                    current = nvml.compute_mode(gpu)
                    if current == entry["original"]:
                        continue
                    if current != entry.get("set"):
                        self.warnings.append("the compute mode of %s was changed by someone else (now %s): left as "
                                             "it is" % (gpu.describe(), COMPUTE_MODES.get(current, current)))
                        continue
                    self.actions.append("restored the compute mode of %s to %s"
                                        % (gpu.describe(), COMPUTE_MODES.get(entry["original"], entry["original"])))
                    if not self.check_mode:
                        nvml.call("nvmlDeviceSetComputeMode", gpu.handle, entry["original"],
                                  what="restore the compute mode", gpu=gpu)
        if os.path.exists(self.state_path) and not self.check_mode:
            os.unlink(self.state_path)

    def read_state(self):
        try:
            with open(self.state_path) as handle:
                data = json.load(handle)
            return data if isinstance(data, dict) else {}
        except (IOError, OSError, ValueError):
            return {}

    def write_state(self, data):
        data["version"] = 1
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(data, handle, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.state_path)
