# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Stand-in for nvshare's nvsharectl on GPU-less test nodes (written for gpuops.nvidia, not nvshare's code).

Built into `nvsharectl` by this directory's Makefile. Same command line and behaviour as the real tool:
  -T N, --set-tq=N         send SET_TQ (N a positive whole number, else a fatal error, exit 1)
  -S on|off, --anti-thrash=on|off
                           send SCHED_ON / SCHED_OFF (anything else: fatal error, exit 1)
  -h, --help               the help text on stderr, exit 0 (also with no option)
Each message goes over its own connection to /var/run/nvshare/scheduler.sock (the compiled-in path); when the
scheduler cannot be reached it prints `[NVSHARE][FATAL]: ...` and exits 1, as the real one does.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import socket
import struct
import sys

SOCK_PATH = "/var/run/nvshare/scheduler.sock"
MESSAGE = struct.Struct("<B254s254sQ20s")
SCHED_ON, SCHED_OFF, SET_TQ = 2, 3, 8
HELP = """usage: nvsharectl [options]

A command line utility to configure the nvshare scheduler.

  -T, --set-tq=n               Set the time quantum of the scheduler to TQ seconds. Only accepts positive integers.
  -S, --anti-thrash=s          Set the desired status of the scheduler. Only accepts values "on" or "off".
  -h, --help                   Shows this help message
"""


def fatal(text):
    sys.stderr.write("[NVSHARE][FATAL]: %s\n" % text)
    sys.exit(1)


def info(text):
    sys.stderr.write("[NVSHARE][INFO]: %s\n" % text)


def send(kind, data=b""):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(SOCK_PATH)
    except OSError:
        info("Failed to connect to UNIX socket at %s\n" % SOCK_PATH)
        fatal("nvshare_connect() failed")
    conn.sendall(MESSAGE.pack(kind, b"", b"", 0xBEEF, data))
    conn.close()


def parse(argv):
    tq, status, show_help = None, None, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            show_help = True
            continue
        for short, long_name in (("-T", "--set-tq"), ("-S", "--anti-thrash")):
            if arg == short or arg == long_name:
                if not args:
                    fatal("Error: option %s needs a value" % arg)
                value = args.pop(0)
            elif arg.startswith(long_name + "="):
                value = arg.split("=", 1)[1]
            elif arg.startswith(short) and len(arg) > 2:
                value = arg[2:]
            else:
                continue
            if short == "-T":
                tq = value
            else:
                status = value
            break
        else:
            fatal("Error: invalid option %s" % arg)
    return tq, status, show_help


def main(argv):
    tq, status, show_help = parse(argv)
    done = 0
    if status is not None:
        if status not in ("on", "off"):
            fatal("Invalid option for --anti-thrash (-S). Must be one of 'on' or 'off'.")
        send(SCHED_ON if status == "on" else SCHED_OFF)
        info("Successfully turned the nvshare-scheduler %s." % status)
        done += 1
    if tq is not None:
        try:
            value = int(tq)
        except ValueError:
            value = 0
        if value <= 0:
            fatal("Invalid option for --set-tq. TQ value must be a positive integer.")
        send(SET_TQ, str(value).encode())
        info("Successfully set the nvshare-scheduler TQ to %d seconds." % value)
        done += 1
    if show_help or not done:
        sys.stderr.write(HELP)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
