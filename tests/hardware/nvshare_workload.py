# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One nvshare evidence client (PyTorch) for GPU runners: allocate, touch, compute, check, report as JSON.

    python nvshare_workload.py --tag T --size BYTES --passes N --out OUT.json [--hold-dir D] [--pid-dir P]

Allocates SIZE bytes on the GPU it sees and fills them, then runs N element-wise passes over them and checks the
result. With --hold-dir it writes D/T.ready after allocating and waits for D/release before computing (the control
without nvshare holds its memory while a second process tries). With --pid-dir it writes P/T.pid first (so a runner
can stop it). OUT.json records wall and compute times, start and end (epoch), whether libnvshare is mapped, the
CUDA_VISIBLE_DEVICES it ran with, the inode of /run/nvshare as it sees it (the GPU's scheduler directory under
nvshare), and the error (an out-of-memory error is the expected result of the control). Exit 0 in every case but a
usage error: the caller reads OUT.json.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--passes", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hold-dir")
    parser.add_argument("--pid-dir")
    args = parser.parse_args()
    t0 = time.time()
    if args.pid_dir:
        with open(os.path.join(args.pid_dir, args.tag + ".pid"), "w") as handle:
            handle.write("%d\n" % os.getpid())
    with open("/proc/self/maps") as handle:
        mapped = any("libnvshare" in line for line in handle)
    rec = {"tag": args.tag, "pid": os.getpid(), "size_bytes": args.size, "passes": args.passes, "started_at": t0,
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "ld_preload": os.environ.get("LD_PRELOAD"),
           "nvshare_mapped": mapped, "ok": False,
           "run_nvshare_inode": os.stat("/run/nvshare").st_ino if os.path.isdir("/run/nvshare") else None}
    try:
        import torch  # pylint: disable=import-outside-toplevel
        rec["device"] = torch.cuda.get_device_properties(0).name
        rec["import_s"] = round(time.time() - t0, 2)
        data = torch.empty(args.size, dtype=torch.uint8, device="cuda")
        data.fill_(1)
        torch.cuda.synchronize()
        rec["allocated_s"] = round(time.time() - t0, 2)
        if args.hold_dir:
            open(os.path.join(args.hold_dir, args.tag + ".ready"), "w").close()
            while not os.path.exists(os.path.join(args.hold_dir, "release")):
                time.sleep(0.2)
        t1 = time.time()
        marks = []
        for index in range(args.passes):
            data.add_(1)
            if (index + 1) % 25 == 0:
                torch.cuda.synchronize()
                marks.append([index + 1, round(time.time() - t0, 2)])
        torch.cuda.synchronize()
        rec["compute_s"] = round(time.time() - t1, 3)
        rec["marks"] = marks
        expect = (1 + args.passes) % 256
        rec["verified"] = bool((data[: 1 << 20] == expect).all().item() and (data[-(1 << 20):] == expect).all().item())
        rec["ok"] = rec["verified"]
    except Exception as exc:  # pylint: disable=broad-except  # the control's out-of-memory error is a result
        rec["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    rec["ended_at"] = time.time()
    rec["wall_s"] = round(rec["ended_at"] - t0, 2)
    with open(args.out, "w") as handle:
        json.dump(rec, handle, indent=1)
    print(json.dumps(dict((key, rec.get(key)) for key in ("tag", "ok", "wall_s", "compute_s", "error"))))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
