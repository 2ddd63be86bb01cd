# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nvshare-scheduler@.service helper: applies the scheduler's TQ and anti-thrash mode through nvsharectl.

    python3 gpuops_nvshare_helper.py configure INSTANCE MAINPID

The unit runs it as ExecStartPost (after every start, systemd's restarts included) and ExecReload, inside the
unit's mount namespace, where /var/run/nvshare is this GPU's directory: nvsharectl, which only knows nvshare's
compiled-in socket path, reaches this instance's scheduler. It reads /etc/gpuops/nvshare/nvshare.json (the desired
state the role validated on the node with nvidia_nvshare_instances and wrote unchanged), validates it again with the
same validator (the engine under /usr/local/lib/gpuops-nvidia), waits for the scheduler to listen, runs nvsharectl
(argv) and records what it applied, with the scheduler's pid, in /var/run/nvshare/gpuops-applied.json, which the
role reads to stay idempotent. Exit 1 with the reason on stderr (the journal) on failure, 2 on a usage error.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import subprocess
import sys

LIB = os.environ.get("GPUOPS_NVIDIA_LIB", "/usr/local/lib/gpuops-nvidia")
CONFIG = os.environ.get("GPUOPS_NVSHARE_CONFIG", "/etc/gpuops/nvshare/nvshare.json")
# nvshare's compiled-in directory as this process sees it (tests point it elsewhere).
SOCKET_DIR = os.environ.get("GPUOPS_NVSHARE_SOCKET_DIR", "/var/run/nvshare")


def run(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def main(argv):
    if len(argv) != 3 or argv[0] != "configure":
        sys.stderr.write("usage: gpuops_nvshare_helper.py configure INSTANCE MAINPID\n")
        return 2
    _step, instance, pid = argv
    if LIB not in sys.path:
        sys.path.insert(0, LIB)
    # pylint: disable=import-outside-toplevel
    from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _nvshare

    try:
        with open(CONFIG) as handle:
            desired = _nvshare.validate(json.load(handle), where=CONFIG)
        lines = _nvshare.configure(desired, pid, run, socket_path=os.path.join(SOCKET_DIR, _nvshare.SOCKET_NAME),
                                   applied_path=os.path.join(SOCKET_DIR, _nvshare.APPLIED_NAME))
    except (IOError, OSError, ValueError) as exc:
        sys.stderr.write("nvshare-scheduler@%s: configure: %s\n" % (instance, exc))
        return 1
    except GpuopsError as exc:
        sys.stderr.write("nvshare-scheduler@%s: configure: %s (%s)\n" % (instance, exc.message, exc.kind))
        return 1
    for line in lines:
        print("nvshare-scheduler@%s: %s" % (instance, line))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
