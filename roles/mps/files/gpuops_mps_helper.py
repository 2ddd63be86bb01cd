# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gpuops-mps@.service helper: runs the nvidia_mps module's engine for one instance of the mps role.

    python3 gpuops_mps_helper.py pre-start|start|configure|stop|post-stop INSTANCE

reads /etc/gpuops/mps/daemon/INSTANCE.json (the desired state the role validated on the node with
nvidia_mps_instances and wrote unchanged), validates it again with the same validator, and imports the engine
from the collection copy under /usr/local/lib/gpuops-nvidia. `pre-start` (root) also brings
CUDA_VISIBLE_DEVICES in /etc/gpuops/mps/INSTANCE.env up to date (MIG devices selected by placement have new
UUIDs after being recreated). `start` resolves the devices through NVML now, on the node, and replaces itself
with `nvidia-cuda-mps-control -d` in the daemon's environment. Exit 1 with the
engine's message on stderr (journal) on failure, 2 on a usage error.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys

LIB = os.environ.get("GPUOPS_NVIDIA_LIB", "/usr/local/lib/gpuops-nvidia")
CONFIG_DIR = os.environ.get("GPUOPS_MPS_CONFIG_DIR", "/etc/gpuops/mps/daemon")
STEPS = ("pre-start", "start", "configure", "stop", "post-stop")


def main(argv, execve=os.execve):
    if len(argv) != 2 or argv[0] not in STEPS:
        sys.stderr.write("usage: gpuops_mps_helper.py %s INSTANCE\n" % "|".join(STEPS))
        return 2
    step, instance = argv
    if LIB not in sys.path:
        sys.path.insert(0, LIB)
    # pylint: disable=import-outside-toplevel
    from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
    from ansible_collections.gpuops.nvidia.plugins.module_utils._mps import MpsDaemon
    from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_control import subprocess_runner
    from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_spec import CONTROL_BINARY

    try:
        with open(os.path.join(CONFIG_DIR, instance + ".json")) as handle:
            config = json.load(handle)
        config.pop("_comment", None)
        daemon = MpsDaemon(config, subprocess_runner, binary=config.get("binary") or CONTROL_BINARY)
        if step == "start":
            command, env = daemon.service_start()
            print("gpuops-mps@%s: %s%s" % (instance, " ".join(command), " for " + env["CUDA_VISIBLE_DEVICES"]
                                           if env.get("CUDA_VISIBLE_DEVICES") else ""))
            sys.stdout.flush()
            environment = dict(os.environ)
            environment.pop("CUDA_VISIBLE_DEVICES", None)
            environment.update(env)
            execve(command[0], command, environment)
            return 0
        if step == "pre-start":
            lines = daemon.service_pre_start(os.path.join(os.path.dirname(CONFIG_DIR), instance + ".env"))
        else:
            lines = {"configure": daemon.service_configure, "stop": daemon.service_stop,
                     "post-stop": daemon.service_post_stop}[step]()
        for line in lines:
            print("gpuops-mps@%s: %s" % (instance, line))
        for line in daemon.warnings:
            sys.stderr.write("gpuops-mps@%s: warning: %s\n" % (instance, line))
    except (IOError, OSError, ValueError) as exc:
        sys.stderr.write("gpuops-mps@%s: %s: %s\n" % (instance, step, exc))
        return 1
    except GpuopsError as exc:
        sys.stderr.write("gpuops-mps@%s: %s: %s (%s)\n" % (instance, step, exc.message, exc.kind))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
