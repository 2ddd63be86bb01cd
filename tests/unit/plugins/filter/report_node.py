# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A simulated GPU node set up and read the way playbooks/tasks/gpu_report_node.yml reads a real one.

`SlurmNode` converges a simulated 8 x H100 node to the example Slurm-node settings with the collection's own
modules (persistence, MIG on GPUs 0-1, one MPS daemon per MIG device through the nvidia-cuda-mps-control
stand-in, a `shared` daemon on GPUs 6-7), then gathers `found` with the same modules and options as the
playbook: nvidia_gpu_info, nvidia_mig and nvidia_mps in check mode, nvidia_mps_instances.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import signal
import tempfile

from ansible_collections.gpuops.nvidia.plugins.module_utils._host import process_alive
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_control import PID_FILE
from ansible_collections.gpuops.nvidia.plugins.modules import (
    nvidia_gpu_info,
    nvidia_mig,
    nvidia_mps,
    nvidia_mps_instances,
    nvidia_persistence,
)

STANDINS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "standins"))
LAYOUT = {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}
SHARED = {"name": "shared", "devices": [6, 7], "default_active_thread_percentage": 50,
          "default_device_pinned_mem_limit": {"0": "20G", "1": "20G"}}


def set_options(config):
    """A daemon's desired state as module options: nulls left out, as the playbook does (AnsibleModule checks
    an explicit null against an option's choices)."""
    return dict((key, value) for key, value in config.items() if value is not None)


def slurm_desired(**overrides):
    """The desired state the playbook builds from the example inventory's slurm_gpu_nodes settings."""
    desired = {
        "driver": {"enabled": False},
        "persistence": {"enabled": True, "mode": True, "devices": ["all"], "device_filter": []},
        "mig": {"enabled": True, "mode": None, "layout": dict(LAYOUT), "devices": [0, 1], "device_filter": [],
                "config_file": None, "config_name": None},
        "mps": {"enabled": True, "instances": [dict(SHARED)], "per_gpu": False, "per_mig_device": True,
                "defaults": {"default_active_thread_percentage": None, "default_device_pinned_mem_limit": None,
                             "default_client_priority": None, "compute_mode": "exclusive_process"}},
        "nvshare": {"enabled": False},
    }
    for key, value in overrides.items():
        desired[key] = value
    return desired


class SlurmNode:
    """Converge and read a simulated node; `run` is the unit tests' in-process module runner."""

    def __init__(self, sim, run, tmp_path, monkeypatch, gpus="h100-80gb:8"):
        self.sim, self.run, self.tmp = sim, run, tmp_path
        monkeypatch.setenv("PATH", STANDINS + os.pathsep + os.environ.get("PATH", ""))
        monkeypatch.delenv("GPUOPS_MPS_STANDIN_FAIL_START", raising=False)
        # A short root: the control's socket path in <pipe_root>/<MIG UUID>/ must fit AF_UNIX's 108 bytes.
        self.pipe_root = tempfile.mkdtemp(prefix="gr", dir="/tmp")
        self.log_root = str(tmp_path / "log-mps")
        self.config_dir = str(tmp_path / "etc-mps")
        sim.create(gpus)
        self.pipes = []
        self.written = {}

    def _ok(self, module, args, check_mode=False):
        result = self.run(module, args, check_mode=check_mode)
        assert not result.get("failed"), result
        return result

    def plan_args(self, mps):
        defaults = dict(mps.get("defaults") or {})
        return {"instances": mps.get("instances") or [], "per_gpu": mps.get("per_gpu", False),
                "per_mig_device": mps.get("per_mig_device", False), "defaults": defaults,
                "pipe_root": self.pipe_root, "log_root": self.log_root,
                "binary": os.path.join(STANDINS, "nvidia-cuda-mps-control")}

    def converge(self, desired=None):
        """What site.yml does to the node, through the same modules the roles call."""
        desired = desired or slurm_desired()
        self._ok(nvidia_persistence, {"devices": ["all"], "state": "enabled",
                                      "persistenced_run_dir": str(self.tmp / "no-persistenced")})
        mig = desired["mig"]
        self._ok(nvidia_mig, {"devices": mig["devices"], "layout": mig["layout"]})
        plan = self._ok(nvidia_mps_instances, dict(self.plan_args(desired["mps"]), config_dir=self.config_dir,
                                                   unit_dir=str(self.tmp / "units")))
        for instance in plan["instances"]:
            self._ok(nvidia_mps, set_options(instance["config"]))
            self.pipes.append(instance["config"]["pipe_directory"])
            self.written[instance["name"]] = instance["config"]
        return plan

    def gather(self, desired=None):
        """`found` as playbooks/tasks/gpu_report_node.yml assembles it."""
        desired = desired or slurm_desired()
        found = {"gpu_info": self._ok(nvidia_gpu_info, {"gather": ["all"]})}
        mig = desired["mig"]
        if mig.get("enabled"):
            args = {"devices": mig["devices"], "device_filter": mig["device_filter"]}
            if mig.get("layout") is not None:
                args["layout"] = mig["layout"]
            if mig.get("mode"):
                args["mode"] = mig["mode"]
            found["mig_check"] = self.run(nvidia_mig, args, check_mode=True)
        # One nvidia_mps_instances run plans the inventory's daemons and inspects them and the daemons whose desired
        # state converge() wrote to the role's configuration directory.
        enabled = desired["mps"].get("enabled")
        plan = self.run(nvidia_mps_instances, dict(self.plan_args(desired["mps"] if enabled else {}),
                                                   inspect=self.config_dir))
        found["mps_plan"] = plan if enabled else {"skipped": True}
        checks = plan.get("inspected") or []
        found["mps_checks"] = checks
        found["services"] = {}
        for item in [c["item"] for c in checks if c["item"]["name"] in self.written]:  # units the role installed
            pid_file = os.path.join(item["config"]["pipe_directory"], PID_FILE)
            running = False
            if os.path.exists(pid_file):
                with open(pid_file) as handle:
                    running = process_alive(int(handle.read()))
            found["services"]["gpuops-mps@%s.service" % item["name"]] = {
                "name": "gpuops-mps@%s.service" % item["name"], "state": "running" if running else "stopped",
                "status": "enabled", "source": "systemd"}
        return found

    def stop_all(self):
        for pipe in self.pipes + ([os.path.join(self.pipe_root, n) for n in os.listdir(self.pipe_root)]
                                  if os.path.isdir(self.pipe_root) else []):
            try:
                with open(os.path.join(pipe, PID_FILE)) as handle:
                    pid = int(handle.read())
            except (IOError, OSError, ValueError):
                continue
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.pipe_root, ignore_errors=True)
