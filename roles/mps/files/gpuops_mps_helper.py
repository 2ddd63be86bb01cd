# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gpuops-mps@.service helper: runs the nvidia_mps module's engine for one instance of the mps role.

    python3 gpuops_mps_helper.py pre-start|configure|stop|post-stop INSTANCE

reads /etc/gpuops/mps/daemon/INSTANCE.json (written by the role) and imports the engine from the collection
copy under /usr/local/lib/gpuops-nvidia. Exit 1 with the engine's message on stderr (journal) on failure.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys

LIB = os.environ.get("GPUOPS_NVIDIA_LIB", "/usr/local/lib/gpuops-nvidia")
CONFIG_DIR = os.environ.get("GPUOPS_MPS_CONFIG_DIR", "/etc/gpuops/mps/daemon")
STEPS = ("pre-start", "configure", "stop", "post-stop")


def main(argv):
    if len(argv) != 2 or argv[0] not in STEPS:
        sys.stderr.write("usage: gpuops_mps_helper.py %s INSTANCE\n" % "|".join(STEPS))
        return 2
    step, instance = argv
    sys.path.insert(0, LIB)
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _mps  # pylint: disable=import-outside-toplevel
    from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlError  # pylint: disable=import-outside-toplevel

    try:
        with open(os.path.join(CONFIG_DIR, instance + ".json")) as handle:
            config = json.load(handle)
        daemon = _mps.MpsDaemon(config, _mps.subprocess_runner, binary=config.get("binary") or "nvidia-cuda-mps-control")
        action = {"pre-start": daemon.service_pre_start, "configure": daemon.service_configure,
                  "stop": daemon.service_stop, "post-stop": daemon.service_post_stop}[step]
        for line in action():
            print("gpuops-mps@%s: %s" % (instance, line))
        for line in daemon.warnings:
            sys.stderr.write("gpuops-mps@%s: warning: %s\n" % (instance, line))
    except (IOError, OSError, ValueError) as exc:
        sys.stderr.write("gpuops-mps@%s: %s: %s\n" % (instance, step, exc))
        return 1
    except (_mps.MpsError, NvmlError) as exc:
        sys.stderr.write("gpuops-mps@%s: %s: %s\n" % (instance, step, exc.message))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
