# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nvshare-scheduler@.service helper: applies the scheduler's TQ and anti-thrash mode through nvsharectl.

    python3 gpuops_nvshare_helper.py configure INSTANCE MAINPID CONFIG

The unit runs it as ExecStartPost (after every start, systemd's restarts included) and ExecReload, inside the
unit's mount namespace, where /var/run/nvshare is this GPU's directory: nvsharectl, which only knows nvshare's
compiled-in socket path, reaches this instance's scheduler. It reads CONFIG (the role's nvshare.json: the desired
state it validated on the node with nvidia_nvshare_instances and wrote unchanged), validates it again with the same
validator (the engine installed next to this file, under the collection's package path), waits for the scheduler to listen, runs nvsharectl
(argv) and records what it applied, with the scheduler's pid, in /var/run/nvshare/gpuops-applied.json, which the
role reads to stay idempotent. Exit 1 with the reason on stderr (the journal) on failure, 2 on a usage error.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import subprocess
import sys

# The engine role installs the engine next to this file (nvshare_lib_dir); tests point elsewhere.
LIB = os.environ.get("GPUOPS_NVIDIA_LIB", os.path.dirname(os.path.abspath(__file__)))
# nvshare's compiled-in directory as this process sees it (tests point it elsewhere).
SOCKET_DIR = os.environ.get("GPUOPS_NVSHARE_SOCKET_DIR", "/var/run/nvshare")


def run(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def main(argv):
    if len(argv) != 4 or argv[0] != "configure":
        sys.stderr.write("usage: gpuops_nvshare_helper.py configure INSTANCE MAINPID CONFIG\n")
        return 2
    _step, instance, pid, config = argv
    if LIB not in sys.path:
        sys.path.insert(0, LIB)
    # pylint: disable=import-outside-toplevel
    from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _nvshare

    try:
        with open(config) as handle:
            desired = _nvshare.validate(json.load(handle), where=config)
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
