# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A real CUDA client (PyTorch) for MPS evidence on GPU runners: it uses only the environment it is given.

    python cuda_client.py [--allocate-gib 2] [--over-gib 6] [--hold 20] [--pid-file F]

Prints what CUDA sees, allocates and fills --allocate-gib (must work), tries --over-gib (an MPS pinned limit
below it must refuse it), stays connected --hold seconds (so the daemon lists it), and exits 0 when the first
allocation worked.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--allocate-gib", type=float, default=2)
    parser.add_argument("--over-gib", type=float, default=0)
    parser.add_argument("--hold", type=float, default=0)
    parser.add_argument("--pid-file")
    args = parser.parse_args()
    if args.pid_file:
        with open(args.pid_file, "w") as handle:
            handle.write("%d\n" % os.getpid())
    import torch  # pylint: disable=import-outside-toplevel
    gib = 1 << 30
    device = torch.cuda.current_device()
    print("visible %s count %d name %s" % (os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(),
                                           torch.cuda.get_device_name(device)), flush=True)
    first = torch.empty(int(args.allocate_gib * gib), dtype=torch.uint8, device="cuda")
    first.fill_(1)
    torch.cuda.synchronize()
    print("allocated %g GiB ok" % args.allocate_gib, flush=True)
    if args.over_gib:
        try:
            second = torch.empty(int(args.over_gib * gib), dtype=torch.uint8, device="cuda")
            second.fill_(1)
            torch.cuda.synchronize()
            print("over %g GiB allocated (limit NOT enforced)" % args.over_gib, flush=True)
        except RuntimeError as exc:
            print("over %g GiB refused: %s" % (args.over_gib, str(exc).splitlines()[0]), flush=True)
    time.sleep(args.hold)
    print("client done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
