# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the engines read about processes on the node, from /proc. Plain Python: no Ansible imports."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def process_alive(pid):
    """True while `pid` runs, whoever owns it; a zombie counts as gone (an exited daemon nobody reaped)."""
    try:
        with open("/proc/%d/stat" % int(pid)) as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (IOError, OSError, IndexError, ValueError):
        return False


def process_environ(pid):
    """The environment a process was started with, or None when it cannot be read."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as handle:
            raw = handle.read()
    except (IOError, OSError):
        return None
    environ = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            environ[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return environ


def process_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [arg.decode("utf-8", "replace") for arg in handle.read().split(b"\0") if arg]
    except (IOError, OSError):
        return None


def process_uid(pid):
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (IOError, OSError, ValueError, IndexError):
        return None
    return None
