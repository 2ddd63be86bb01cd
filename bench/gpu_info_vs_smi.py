# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What reading a GPU node costs: nvidia_gpu_info's engine against `nvidia-smi --query-gpu`, on a real GPU host.

A benchmark, not a test: prints medians (and min/max) of interleaved rounds, so that load drift hits every
variant alike, and writes them as JSON. Read-only (NVML queries and nvidia-smi queries only).

    python3 bench/gpu_info_vs_smi.py [--rounds 20] [--json OUT.json]

Variants, each timed per round:
  smi-query       nvidia-smi --query-gpu=<the fields of gather=min> --format=csv (a process, as a shell task runs it)
  engine-min      in-process: NvmlSession open + gather(subsets=()) + close (identity, memory, persistence,
                  compute and MIG mode, fabric; what nvidia-smi's query prints)
  engine-all      in-process: the same with every subset (MIG profiles with placements, instances, processes,
                  NVLink): what nvidia_gpu_info gathers by default
  python-bare     a fresh `python3 -c pass` (the floor of any module run)
  engine-process  a fresh python3 that imports the engine and runs gather=min (a module run minus Ansible's own
                  wrapper and transport)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTIONS = os.path.join(HERE, "..", ".build", "collections")
SMI_FIELDS = ("index,uuid,name,pci.bus_id,memory.total,persistence_mode,compute_mode,mig.mode.current,"
              "mig.mode.pending,driver_version")


def collections_path():
    """A directory holding ansible_collections/gpuops/nvidia -> this checkout (made here when missing)."""
    link = os.path.join(COLLECTIONS, "ansible_collections", "gpuops", "nvidia")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(os.path.join(HERE, "..")), link)
    return os.path.abspath(COLLECTIONS)


def engine_gather(subsets):
    # pylint: disable=import-outside-toplevel
    from ansible_collections.gpuops.nvidia.plugins.module_utils._gpu_info import gather
    from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession

    with NvmlSession() as session:
        return gather(session, subsets=subsets)


ENGINE_PROCESS = ("from ansible_collections.gpuops.nvidia.plugins.module_utils._gpu_info import gather\n"
                  "from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession\n"
                  "with NvmlSession() as s:\n    gather(s, subsets=())\n")


def timed(function):
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--smi-fields", default=SMI_FIELDS, help="nvidia-smi --query-gpu fields (default: %(default)s)")
    args = parser.parse_args(argv)
    path = collections_path()
    sys.path.insert(0, path)
    env = dict(os.environ, PYTHONPATH=path + os.pathsep + os.environ.get("PYTHONPATH", ""))
    from ansible_collections.gpuops.nvidia.plugins.module_utils._gpu_info import SUBSETS  # noqa: E402 pylint: disable=import-outside-toplevel

    variants = {
        "smi-query": lambda: subprocess.run(["nvidia-smi", "--query-gpu=" + args.smi_fields, "--format=csv"],
                                            check=True, capture_output=True),
        "engine-min": lambda: engine_gather(()),
        "engine-all": lambda: engine_gather(SUBSETS),
        "python-bare": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
        "engine-process": lambda: subprocess.run([sys.executable, "-c", ENGINE_PROCESS], check=True, env=env),
    }
    gpus = len(engine_gather(())["gpus"])
    for function in variants.values():  # warm caches (driver, page cache) once, not timed
        function()
    samples = dict((name, []) for name in variants)
    for _round in range(args.rounds):
        for name, function in variants.items():
            samples[name].append(timed(function))
    figures = dict((name, {"median_ms": round(statistics.median(values), 2), "min_ms": round(min(values), 2),
                           "max_ms": round(max(values), 2), "n": len(values)}) for name, values in samples.items())
    print("%d GPU(s), %d interleaved rounds" % (gpus, args.rounds))
    print("%-16s %10s %10s %10s" % ("variant", "median ms", "min ms", "max ms"))
    for name, figure in figures.items():
        print("%-16s %10.2f %10.2f %10.2f" % (name, figure["median_ms"], figure["min_ms"], figure["max_ms"]))
    ratio = figures["engine-all"]["median_ms"] / figures["smi-query"]["median_ms"]
    print("engine-all / smi-query: %.2f (target: <= 1.0)" % ratio)
    startup = figures["engine-process"]["median_ms"] / figures["python-bare"]["median_ms"]
    print("engine-process / python-bare: %.2f" % startup)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"gpus": gpus, "rounds": args.rounds, "figures": figures}, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
