# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The MPS control protocol: one command at a time to nvidia-cuda-mps-control, every reply parsed. Plain Python.

The control binary exits 0 even when it rejects a command (`Unknown command "x"`, `Server N not found`), so
every reply is read. Commands are sent without a trailing empty line: the real control (driver 580) reads an
extra newline as an empty command and answers `Unknown command ""`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.gpuops.nvidia.plugins.module_utils._host import process_alive
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_spec import MpsError, number_text
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import text

PID_FILE = "nvidia-cuda-mps-control.pid"
NO_DAEMON = "Cannot find MPS control daemon process"
_SERVER_NOT_FOUND = re.compile(r"^Server \S* ?not found", re.IGNORECASE)


def log_tail(log_directory, lines=20):
    path = os.path.join(log_directory, "control.log")
    try:
        with open(path) as handle:
            return [line.rstrip("\n") for line in handle.readlines()[-lines:]]
    except (IOError, OSError):
        return ["(no %s)" % path]


def subprocess_runner(argv, env=None, data=None):
    """A `run(argv, env, data) -> (rc, out, err)` for callers without Ansible: no shell, environment merged."""
    import subprocess
    merged = dict(os.environ)
    merged.update(env or {})
    process = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=merged, close_fds=True)
    out, err = process.communicate(data.encode() if data is not None else None)
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


class MpsControl:
    """Commands to one control daemon through the control binary, via an injected `run`."""

    def __init__(self, binary, pipe_directory, log_directory, run):
        self.binary = binary
        self.pipe_directory = pipe_directory
        self.log_directory = log_directory
        self.run = run
        # Replies of `get_*` commands by command line, when the caller turned caching on: a check-mode run that
        # changes nothing asks each question once (the start, the report and the defaults read the same state).
        self.cache = None

    def environment(self):
        return {"CUDA_MPS_PIPE_DIRECTORY": self.pipe_directory, "CUDA_MPS_LOG_DIRECTORY": self.log_directory}

    def query(self, line):
        """Send one command; its reply lines. Raises MpsError for every error the daemon reports."""
        if self.cache is not None and line in self.cache:
            return list(self.cache[line])
        rc, out, err = self.run([self.binary], env=self.environment(), data=line + "\n")
        out, err = text(out or ""), text(err or "")
        lines = [item.strip() for item in out.splitlines() if item.strip()]
        if NO_DAEMON in out or NO_DAEMON in err:
            raise MpsError("no MPS control daemon is running on pipe directory %s" % self.pipe_directory,
                           kind="not_running")
        if rc != 0:
            raise MpsError("`%s` sent to the MPS control daemon failed (rc %d): %s"
                           % (line, rc, (err or out).strip()), kind="control_failed")
        if lines and lines[0].startswith("Unknown command"):
            raise MpsError("the MPS control daemon on %s does not know `%s` (%s): the driver is too old for "
                           "this setting" % (self.pipe_directory, line, lines[0]), kind="unsupported_command")
        if lines and _SERVER_NOT_FOUND.match(lines[0]):
            raise MpsError(lines[0], kind="server_not_found")
        if lines and lines[0].lower().startswith("invalid"):
            raise MpsError("the MPS control daemon rejected `%s`: %s" % (line, lines[0]), kind="rejected")
        if self.cache is not None and line.startswith("get_"):
            self.cache[line] = list(lines)
        return lines

    def is_running(self):
        if not os.path.isdir(self.pipe_directory):
            return False
        try:
            self.query("get_server_list")
        except MpsError as exc:
            if exc.kind == "not_running":
                return False
            raise
        return True

    def pid(self):
        try:
            with open(os.path.join(self.pipe_directory, PID_FILE)) as handle:
                pid = int(handle.read().strip())
        except (IOError, OSError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def servers(self):
        """[{pid, status, clients, active_thread_percentage}] of the running MPS servers."""
        servers = []
        for pid in self.query("get_server_list"):
            if not pid.isdigit():
                continue
            entry = {"pid": int(pid), "status": None, "clients": [], "active_thread_percentage": None}
            try:
                entry["status"] = " ".join(self.query("get_server_status %s" % pid)) or None
                entry["clients"] = [int(c) for c in self.query("get_client_list %s" % pid) if c.isdigit()]
                value = self.query("get_active_thread_percentage %s" % pid)
                entry["active_thread_percentage"] = float(value[0]) if value else None
            except MpsError as exc:
                if exc.kind == "server_not_found":
                    continue  # exited between the list and the query
                if exc.kind != "unsupported_command":
                    raise
            except ValueError:
                pass
            servers.append(entry)
        return servers

    def get_percentage(self):
        value = self.query("get_default_active_thread_percentage")
        return float(value[0]) if value else None

    def set_percentage(self, value):
        self.query("set_default_active_thread_percentage %s" % number_text(value))

    def get_limit(self, device):
        value = self.query("get_default_device_pinned_mem_limit %s" % device)
        return value[0] if value else "0"

    def set_limit(self, device, value):
        self.query("set_default_device_pinned_mem_limit %s %s" % (device, value))

    def get_priority(self):
        value = self.query("get_default_client_priority")
        return int(value[0]) if value and value[0].isdigit() else None

    def set_priority(self, value):
        self.query("set_default_client_priority %d" % value)

    def quit(self):
        self.query("quit")
