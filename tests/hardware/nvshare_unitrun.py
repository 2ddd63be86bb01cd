# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the nvshare role's rendered unit and client drop-in the way systemd would, on a GPU runner without systemd.

    python nvshare_unitrun.py start UNIT INSTANCE LOG     prints the scheduler's pid once ExecStartPost succeeded
    python nvshare_unitrun.py client DROPIN -- ARGV...    runs ARGV with the drop-in's Environment= and binding
    python nvshare_unitrun.py stop MATCH PID|DIR...       TERM, then KILL after 5 s, each PID (or each pid in a
                                                          DIR/*.pid file) whose command line contains MATCH

start: RuntimeDirectory= is created under /run, ExecStart runs with only the unit's Environment= (and a PATH) in a
private mount namespace where BindPaths= is applied (unshare + mount --bind), its output appended to LOG, in a
session of its own; each ExecStartPost (the role's helper: nvsharectl) runs inside that namespace (nsenter) with
$MAINPID replaced. client: a namespace of its own with the drop-in's BindReadOnlyPaths= (bound, then remounted
read-only) and its Environment= over the caller's environment (a service keeps its own environment too).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shlex
import signal
import subprocess
import sys
import time

BIND = 'mkdir -p "$2" && mount --bind "$1" "$2" %s&& shift 2 && exec "$@"'


def parse(path, instance=""):
    keys = {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith(("#", "[")) or "=" not in line:
                continue
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value.replace("%i", instance))
    return keys


def environment(keys, inherit=False):
    env = dict(os.environ) if inherit else {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for assignment in keys.get("Environment", []):
        name, value = assignment.split("=", 1)
        env[name] = value
    return env


def start(unit, instance, log):
    keys = parse(unit, instance)
    runtime = os.path.join("/run", keys["RuntimeDirectory"][0])
    if not os.path.isdir(runtime):
        os.makedirs(runtime)
    os.chmod(runtime, int(keys.get("RuntimeDirectoryMode", ["0755"])[0], 8))
    source, target = keys["BindPaths"][0].split(":")
    env = environment(keys)
    argv = shlex.split(keys["ExecStart"][0])
    with open(os.devnull, "rb") as devnull, open(log, "ab") as out:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", BIND % "",
                                 "sh", source, target] + argv, env=env, stdin=devnull, stdout=out, stderr=out,
                                start_new_session=True)
        time.sleep(0.5)
        if proc.poll() is not None:
            sys.stderr.write("ExecStart exited at once with %s (see %s)\n" % (proc.returncode, log))
            return 1
        for post in keys.get("ExecStartPost", []):
            post_argv = [part.replace("$MAINPID", str(proc.pid)) for part in shlex.split(post)]
            done = subprocess.call(["nsenter", "--mount=/proc/%d/ns/mnt" % proc.pid, "--"] + post_argv, env=env,
                                   stdin=devnull, stdout=out, stderr=out)
            if done != 0:
                sys.stderr.write("ExecStartPost failed with %s (see %s); scheduler pid %d\n" % (done, log, proc.pid))
                print(proc.pid)
                return 1
    print(proc.pid)
    return 0


def client(dropin, argv):
    keys = parse(dropin)
    source, target = keys["BindReadOnlyPaths"][0].split(":")
    env = environment(keys, inherit=True)
    if os.environ.get("GPUOPS_LIBCUDA_LINK_DIR"):  # libnvshare dlopen()s libcuda.so; some hosts have only .so.1
        env["LD_LIBRARY_PATH"] = ":".join(path for path in (os.environ["GPUOPS_LIBCUDA_LINK_DIR"],
                                                            os.environ.get("LD_LIBRARY_PATH")) if path)
    os.execvpe("unshare", ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                           BIND % '&& mount -o remount,bind,ro "$2" ', "sh", source, target] + argv, env)


def alive(pid, match):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        with open("/proc/%d/stat" % pid) as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (IOError, OSError):
        return False
    return state != "Z" and match in cmdline


def stop(match, pids):
    pids = [pid for pid in pids if alive(pid, match)]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(pid, match) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid, match):
            os.kill(pid, signal.SIGKILL)
            print("killed %d" % pid)
        else:
            print("stopped %d" % pid)
    return 0


def pids_of(args):
    pids = []
    for arg in args:
        if os.path.isdir(arg):
            for name in sorted(os.listdir(arg)):
                if name.endswith(".pid"):
                    with open(os.path.join(arg, name)) as handle:
                        pids.extend(int(pid) for pid in handle.read().split())
        elif arg.strip():
            pids.append(int(arg))
    return pids


def main(argv):
    if len(argv) == 4 and argv[0] == "start":
        return start(*argv[1:])
    if len(argv) > 3 and argv[0] == "client" and argv[2] == "--":
        return client(argv[1], argv[3:])
    if len(argv) >= 2 and argv[0] == "stop":
        return stop(argv[1], pids_of(argv[2:]))
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
