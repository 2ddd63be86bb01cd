# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MPS control-daemon lifecycle: start, configure, report and stop one nvidia-cuda-mps-control. Plain Python.

One daemon is identified by its pipe directory. The parts:

* `_mps_spec`: the options, the one validator, the one client-environment writer;
* `_mps_control`: the control protocol (commands and replies);
* `_mps_devices`: device resolution (through the NVML seam) and the compute mode of the daemon's GPUs;
* `_mps_defaults`: the daemon's defaults, read, set where they differ, read back (or predicted in check mode);
* this file: `MpsDaemon`, the lifecycle (start, stop, start-time drift, report) and the steps the
  mps role's systemd unit runs through gpuops_mps_helper.py.

Used by the nvidia_mps module and by the mps role's systemd helper, which imports these files from
/usr/local/lib/gpuops-nvidia/ansible_collections/...
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import time

from ansible_collections.gpuops.nvidia.plugins.module_utils._host import (
    process_alive,
    process_cmdline,
    process_environ,
    process_uid,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_control import PID_FILE, MpsControl, log_tail
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_defaults import DaemonDefaults
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_devices import DaemonDevices
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_spec import (
    CONTROL_BINARY,
    DEFAULT_LOG_DIRECTORY,
    MpsError,
    client_environment,
    refresh_client_environment_file,
    validate,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlError, NvmlSession, text


class MpsDaemon:
    """Bring one control daemon to the desired state. Returns a result dict; raises MpsError / NvmlError."""

    def __init__(self, config, run, binary=None, runuser=None, check_mode=False, nvml_factory=NvmlSession,
                 sleep=time.sleep, clock=time.time):
        self.config = validate(config)
        self.run = run
        self.binary = binary
        self.runuser = runuser
        self.check_mode = check_mode
        self.nvml_factory = nvml_factory
        self.sleep = sleep
        self.clock = clock
        self.actions = []
        self.warnings = []
        self.control = MpsControl(binary, self.config["pipe_directory"], self.config["log_directory"], run) \
            if binary else None
        if self.control is not None and check_mode:
            self.control.cache = {}  # nothing changes in check mode: each question is asked once
        self.devices = DaemonDevices(self.config, nvml_factory, check_mode, self.actions, self.warnings)
        self.defaults = DaemonDefaults(self.config, self.control, check_mode, self.actions, self._running)

    # -- public ---------------------------------------------------------------------------------------

    def apply(self):
        state = self.config.get("state") or "started"
        running = self._running()
        before = self.defaults.snapshot(running)
        if state == "stopped":
            self._stop(running)
            after = {"running": False}
            devices = []
        else:
            devices = self.devices.resolve()
            if running and state == "restarted":
                self._stop(running, reason="state=restarted")
                running = False
            elif running:
                drift = self.start_drift(devices)
                if drift:
                    clients = sum(len(s["clients"]) for s in self.control.servers())
                    if clients:
                        raise MpsError("the running MPS control daemon on %s was started with different %s, which "
                                       "only a restart changes, but %d client(s) are connected: stop them, or "
                                       "use state=restarted to restart anyway"
                                       % (self.config["pipe_directory"], ", ".join(drift), clients),
                                       kind="restart_needed")
                    self._stop(running, reason="started with different %s" % ", ".join(drift))
                    running = False
            if running:
                self.devices.apply_compute_mode(devices)
            else:
                self._start(devices)
            self.defaults.apply()
            after = self.defaults.after(before if running else {"running": False})
        result = {
            "changed": bool(self.actions),
            "actions": self.actions,
            "warnings": self.warnings,
            "state": "stopped" if state == "stopped" else "started",
            "pipe_directory": self.config["pipe_directory"],
            "log_directory": self.config["log_directory"],
            "devices": devices,
            "client_environment": client_environment(self.config, devices) if state != "stopped" else {},
            "diff": {"before": before, "after": after},
        }
        result.update(self._report(state != "stopped"))
        return result

    # -- status ---------------------------------------------------------------------------------------

    def _running(self):
        return self.control is not None and self.control.is_running()

    def _report(self, want_running):
        report = {"running": False, "pid": None, "servers": [], "defaults": {}}
        if not want_running:
            return report
        if self.check_mode and not self._running():
            report.update(running=True, defaults=self.defaults.desired())
            return report
        report.update(running=True, pid=self.control.pid(), servers=self.control.servers(),
                      defaults=self.defaults.live())
        return report

    # -- start / stop -----------------------------------------------------------------------------------

    def _require_binary(self):
        if self.control is None:
            raise MpsError("%s was not found on the managed node: install the NVIDIA driver's CUDA MPS tools "
                           "(Debian/Ubuntu: nvidia-cuda-mps; CUDA repository: cuda-drivers), or give its path "
                           "in `binary`" % CONTROL_BINARY, kind="binary_missing")

    def _ensure_directories(self):
        owner = check_owner(self.config.get("user"), self.config.get("group"))
        for name in ("pipe_directory", "log_directory"):
            path = self.config[name]
            if os.path.lexists(path) and not os.path.isdir(path):
                raise MpsError("%s %s exists and is not a directory" % (name, path), kind="directory")
            if not os.path.isdir(path):
                self.actions.append("create %s %s" % (name, path))
                if self.check_mode:
                    continue
                try:
                    os.makedirs(path, 0o755)
                    os.chmod(path, 0o755)
                except OSError as exc:
                    raise MpsError("cannot create %s %s: %s" % (name, path, exc.strerror or exc), kind="directory")
            if owner is not None and not self.check_mode:
                stat = os.stat(path)
                if (stat.st_uid, stat.st_gid) != owner:
                    self.actions.append("chown %s %s to %d:%d" % (name, path, owner[0], owner[1]))
                    os.chown(path, owner[0], owner[1])
            if not self.check_mode and not os.access(path, os.W_OK | os.X_OK):
                raise MpsError("%s %s is not writable by uid %d" % (name, path, os.geteuid()), kind="directory")
            if not self.check_mode and name == "pipe_directory":
                probe = os.path.join(path, ".gpuops-write-test")
                try:
                    with open(probe, "w"):
                        pass
                    os.unlink(probe)
                except (IOError, OSError) as exc:
                    raise MpsError("%s %s is not writable: %s" % (name, path, getattr(exc, "strerror", exc)),
                                   kind="directory")

    def start_command(self, devices, as_user=True):
        """(argv, environment) that start the daemon for `devices`; the systemd unit's ExecStart runs the same.

        `as_user`: wrap in runuser when the daemon's user differs (the unit sets User= itself).
        """
        argv = [self.binary, "-d"]
        if self.config.get("multiuser"):
            argv.append("-M")
        if as_user and self.config.get("user") and _user_differs(self.config["user"]):
            if not self.runuser:
                raise MpsError("running the daemon as %s needs runuser (util-linux)" % self.config["user"],
                               kind="binary_missing")
            prefix = [self.runuser, "-u", self.config["user"]]
            if self.config.get("group"):
                prefix += ["-g", self.config["group"]]
            argv = prefix + ["--"] + argv
        env = self.control.environment()
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(d["uuid"] for d in devices)
        return argv, env

    def _start(self, devices):
        self._require_binary()
        self._ensure_directories()
        self.devices.apply_compute_mode(devices)
        argv, env = self.start_command(devices)
        self.actions.append("start the MPS control daemon on %s%s" % (
            self.config["pipe_directory"], " for " + env["CUDA_VISIBLE_DEVICES"] if devices else ""))
        if self.check_mode:
            return
        rc, out, err = self.run(argv, env=env, data=None)
        out, err = text(out or ""), text(err or "")
        if rc != 0:
            self._start_failed("`%s -d` failed (rc %d): %s" % (CONTROL_BINARY, rc, (err or out).strip()))
        self._wait_running()

    def _wait_running(self):
        deadline = self.clock() + self.config["timeout"]
        while not self.control.is_running():
            if self.clock() >= deadline:
                self._start_failed("the MPS control daemon did not come up on %s within %ss"
                                   % (self.config["pipe_directory"], self.config["timeout"]))
            self.sleep(0.2)

    def _start_failed(self, message):
        tail = log_tail(self.config["log_directory"])
        try:
            self.devices.restore_compute_mode()
        except (MpsError, NvmlError) as exc:
            message += "; restoring the compute mode failed too: %s" % exc
        path = os.path.join(self.config["log_directory"], "control.log")
        raise MpsError("%s; last lines of %s:\n%s" % (message, path, "\n".join(tail)), kind="start_failed",
                       log_tail=tail)

    # -- the mps role's systemd unit (gpuops-mps@.service) runs these through gpuops_mps_helper.py ------

    def service_pre_start(self, client_env_file=None):
        """ExecStartPre (as root): check the devices, set the compute mode (recorded for service_post_stop) and
        bring the client environment file's CUDA_VISIBLE_DEVICES up to date (MIG devices recreated since)."""
        devices = self.devices.resolve()
        self.devices.apply_compute_mode(devices)
        if client_env_file:
            env = client_environment(self.config, devices)
            for name in refresh_client_environment_file(client_env_file, env):
                self.actions.append("set %s=%s in %s" % (name, env[name], client_env_file))
        return self.actions

    def service_start(self):
        """ExecStart (as the unit's User=): (argv, environment) to exec; devices are resolved now, on the node."""
        self._require_binary()
        return self.start_command(self.devices.resolve(), as_user=False)

    def service_configure(self):
        """ExecStartPost / ExecReload: wait for the daemon, then apply the defaults that differ."""
        self._wait_running()
        self.defaults.apply()
        return self.actions

    def service_stop(self):
        """ExecStop: `quit`, then wait for the daemon to exit."""
        if self.control.is_running():
            pid = self.control.pid()
            self.control.quit()
            self._wait_exit(pid)
            self.actions.append("stopped the MPS control daemon on %s" % self.config["pipe_directory"])
        return self.actions

    def service_post_stop(self):
        """ExecStopPost: restore the compute mode recorded at start."""
        self.devices.restore_compute_mode()
        return self.actions

    def _stop(self, running, reason=None):
        if running:
            pid = self.control.pid()
            self.actions.append("stop the MPS control daemon on %s%s"
                                % (self.config["pipe_directory"], " (%s)" % reason if reason else ""))
            if not self.check_mode:
                try:
                    self.control.quit()
                except MpsError as exc:
                    if exc.kind != "not_running":
                        raise
                self._wait_exit(pid)
        elif not self.check_mode:
            self._remove_stale()
        self.devices.restore_compute_mode()

    def _wait_exit(self, pid):
        deadline = self.clock() + self.config["timeout"]
        while True:
            alive = pid is not None and process_alive(pid)
            if not alive and not self.control.is_running():
                return
            if self.clock() >= deadline:
                break
            self.sleep(0.2)
        if pid is not None and process_alive(pid):
            self.warnings.append("the MPS control daemon (pid %d) ignored `quit` for %ss: sent SIGTERM"
                                 % (pid, self.config["timeout"]))
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
            for _attempt in range(25):
                if not process_alive(pid):
                    return
                self.sleep(0.2)
            raise MpsError("the MPS control daemon (pid %d) on %s did not exit after quit and SIGTERM"
                           % (pid, self.config["pipe_directory"]), kind="stop_failed",
                           log_tail=log_tail(self.config["log_directory"]))

    def _remove_stale(self):
        """A daemon that died (kill -9) leaves its pid file and FIFO; nothing should stay behind."""
        for name in (PID_FILE, "log"):
            path = os.path.join(self.config["pipe_directory"], name)
            if os.path.lexists(path):
                self.actions.append("remove the stale %s left by a dead daemon" % path)
                os.unlink(path)

    def start_drift(self, devices):
        """What differs between the running daemon's start-time settings and the desired ones ([] if not running)."""
        pid = self.control.pid()
        if pid is None:
            return []
        drift = []
        environ = process_environ(pid)
        if environ is None:
            self.warnings.append("cannot read the environment of the MPS control daemon (pid %d): its devices "
                                 "were not compared" % pid)
        else:
            running_devices = environ.get("CUDA_VISIBLE_DEVICES", "")
            wanted = ",".join(d["uuid"] for d in devices)
            if running_devices != wanted:
                drift.append("devices (%s, wanted %s)" % (running_devices or "all", wanted or "all"))
            log_dir = environ.get("CUDA_MPS_LOG_DIRECTORY") or DEFAULT_LOG_DIRECTORY
            if os.path.normpath(log_dir) != self.config["log_directory"]:
                drift.append("log_directory (%s)" % log_dir)
        cmdline = process_cmdline(pid)
        if cmdline is not None:
            multiuser = "-M" in cmdline or "--multiuser-server" in cmdline
            if multiuser != bool(self.config.get("multiuser")):
                drift.append("multiuser (%s)" % multiuser)
        if self.config.get("user"):
            owner = check_owner(self.config["user"], None)
            uid = process_uid(pid)
            if owner and uid is not None and uid != owner[0]:
                drift.append("user (uid %d)" % uid)
        return drift


# -- helpers ---------------------------------------------------------------------------------------------

def check_owner(user, group):
    """(uid, gid) of the daemon's user and group, or None; raises when either does not exist on the node."""
    if not user and not group:
        return None
    import grp
    import pwd
    try:
        entry = pwd.getpwnam(user) if user else None
    except KeyError:
        raise MpsError("user %s does not exist on the managed node" % user, kind="invalid_argument")
    uid = entry.pw_uid if entry else os.geteuid()
    gid = entry.pw_gid if entry else os.getegid()
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise MpsError("group %s does not exist on the managed node" % group, kind="invalid_argument")
    return uid, gid


def _user_differs(user):
    owner = check_owner(user, None)
    return owner is not None and owner[0] != os.geteuid()
