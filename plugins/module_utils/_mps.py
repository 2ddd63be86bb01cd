# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MPS control-daemon engine: start, configure, report and stop one nvidia-cuda-mps-control. Plain Python.

One daemon is identified by its pipe directory. The engine talks to it only through the control binary (argv
lists and an environment, through an injected `run(argv, env=None, data=None) -> (rc, stdout, stderr)`), never
through a shell, and sets the GPUs' compute mode through the NVML seam. The control binary exits 0 even when it
rejects a command (`Unknown command "x"`, `Server N not found`), so every reply is parsed.

Used by the nvidia_mps module and by the mps role's systemd helper (gpuops-mps-helper), which imports this
file from /usr/local/lib/gpuops-nvidia/ansible_collections/...
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import signal
import time

from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlError, NvmlSession, text

CONTROL_BINARY = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
DEFAULT_LOG_DIRECTORY = "/var/log/nvidia-mps"
PID_FILE = "nvidia-cuda-mps-control.pid"
STATE_FILE = ".gpuops-mps-state.json"
NO_DAEMON = "Cannot find MPS control daemon process"

COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}
COMPUTE_MODE_VALUES = {"default": 0, "exclusive_process": 3}

_MEMORY_LIMIT = re.compile(r"^\s*([0-9]+)\s*([MG])\s*$", re.IGNORECASE)
_UNSET_LIMITS = ("", "0", "0M", "0G", "N/A", "NONE", "UNLIMITED", "NOT SET")
_SERVER_NOT_FOUND = re.compile(r"^Server \S* ?not found", re.IGNORECASE)
_UUID = re.compile(r"^(GPU|MIG)-[0-9a-fA-F-]+$")


class MpsError(Exception):
    """A failure with an actionable message; `kind` is a stable keyword, `log_tail` the daemon's last log lines."""

    def __init__(self, message, kind="mps", log_tail=None):
        super(MpsError, self).__init__(message)
        self.message = message
        self.kind = kind
        self.log_tail = log_tail or []


# -- input validation ------------------------------------------------------------------------------------

def parse_memory_limit(value, device=None):
    """`20G`, `512M` (as nvidia-cuda-mps-control takes them) -> canonical text; anything else is an error."""
    match = _MEMORY_LIMIT.match(str(value))
    if not match or int(match.group(1)) < 1:
        where = " for device %s" % device if device is not None else ""
        raise MpsError("bad pinned memory limit %r%s: use a positive whole number of megabytes or gigabytes "
                       "such as 512M or 20G" % (value, where), kind="invalid_argument")
    return "%d%s" % (int(match.group(1)), match.group(2).upper())


def memory_limit_bytes(value):
    """The control daemon's answer (`20G`, `20480M`, `0`) as bytes; None when no limit is set."""
    value = str(value).strip()
    if value.upper() in _UNSET_LIMITS:
        return None
    match = _MEMORY_LIMIT.match(value)
    if not match:
        return value
    return int(match.group(1)) * (1 << (30 if match.group(2).upper() == "G" else 20))


def normalize_device_key(key):
    """A pinned-memory-limit device: a CUDA ordinal as the daemon sees it (0 = first of `devices`) or a UUID."""
    key_text = str(key).strip()
    if key_text.isdigit():
        return key_text
    if _UUID.match(key_text):
        return key_text
    raise MpsError("default_device_pinned_mem_limit keys must be CUDA device ordinals as the daemon sees them "
                   "(0 = the first of `devices`) or GPU-/MIG- UUIDs; got %r" % (key,), kind="invalid_argument")


def validate(config):
    """Check and normalize the desired configuration before anything touches the node."""
    config = dict(config)
    for name in ("pipe_directory", "log_directory"):
        path = config.get(name)
        if not path or not os.path.isabs(path):
            raise MpsError("%s must be an absolute path, got %r" % (name, path), kind="invalid_argument")
        config[name] = os.path.normpath(path)
    if config["pipe_directory"] == config["log_directory"]:
        raise MpsError("pipe_directory and log_directory must differ", kind="invalid_argument")
    percentage = config.get("default_active_thread_percentage")
    if percentage is not None:
        try:
            percentage = float(percentage)
        except (TypeError, ValueError):
            percentage = -1
        if not 1 <= percentage <= 100:
            raise MpsError("default_active_thread_percentage must be a number from 1 to 100, got %r"
                           % (config.get("default_active_thread_percentage"),), kind="invalid_argument")
        config["default_active_thread_percentage"] = percentage
    limits = {}
    for key, value in (config.get("default_device_pinned_mem_limit") or {}).items():
        device = normalize_device_key(key)
        limits[device] = parse_memory_limit(value, device)
    devices = config.get("devices") or None
    if devices is not None:
        ordinals = [int(k) for k in limits if k.isdigit()]
        if ordinals and max(ordinals) >= len(devices):
            raise MpsError("default_device_pinned_mem_limit names device %d but the daemon serves only %d "
                           "device(s): ordinals count within `devices`, from 0" % (max(ordinals), len(devices)),
                           kind="invalid_argument")
    config["devices"] = devices
    config["default_device_pinned_mem_limit"] = limits
    priority = config.get("default_client_priority")
    if priority is not None and str(priority) not in ("0", "1"):
        raise MpsError("default_client_priority must be 0 (normal) or 1 (below normal), got %r" % (priority,),
                       kind="invalid_argument")
    config["default_client_priority"] = None if priority is None else int(priority)
    mode = config.get("compute_mode") or "keep"
    if mode not in ("keep", "default", "exclusive_process"):
        raise MpsError("compute_mode must be keep, default or exclusive_process, got %r" % (mode,),
                       kind="invalid_argument")
    config["compute_mode"] = mode
    config.setdefault("timeout", 15)
    return config


# -- the control binary ----------------------------------------------------------------------------------

def pid_alive(pid):
    """True while `pid` runs (a zombie counts as gone: the real transcript leaves the daemon defunct)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (IOError, OSError, IndexError, ValueError):
        return False


def log_tail(log_directory, lines=20):
    path = os.path.join(log_directory, "control.log")
    try:
        with open(path) as handle:
            return [line.rstrip("\n") for line in handle.readlines()[-lines:]]
    except (IOError, OSError):
        return ["(no %s)" % path]


class MpsControl:
    """Commands to one control daemon through the control binary."""

    def __init__(self, binary, pipe_directory, log_directory, run):
        self.binary = binary
        self.pipe_directory = pipe_directory
        self.log_directory = log_directory
        self.run = run

    def environment(self):
        return {"CUDA_MPS_PIPE_DIRECTORY": self.pipe_directory, "CUDA_MPS_LOG_DIRECTORY": self.log_directory}

    def query(self, line):
        """Send one command; its reply lines. Raises MpsError for every error the daemon reports."""
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
        return lines

    def is_running(self):
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
        return pid if pid_alive(pid) else None

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

    # -- defaults -----------------------------------------------------------------------------------------

    def get_percentage(self):
        value = self.query("get_default_active_thread_percentage")
        return float(value[0]) if value else None

    def set_percentage(self, value):
        self.query("set_default_active_thread_percentage %s" % _number(value))

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


def _number(value):
    return ("%d" % value) if float(value).is_integer() else ("%g" % value)


# -- the engine ------------------------------------------------------------------------------------------

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
        self.state_path = os.path.join(self.config["pipe_directory"], STATE_FILE)

    # -- public ---------------------------------------------------------------------------------------

    def apply(self):
        state = self.config.get("state") or "started"
        running = self._running()
        before = self._snapshot(running)
        if state == "stopped":
            self._stop(running)
            after = {"running": False}
            devices = []
        else:
            devices = self._resolve_devices()
            if running and state == "restarted":
                self._stop(running, reason="state=restarted")
                running = False
            elif running:
                drift = self._start_drift(devices)
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
                self._apply_compute_mode(devices)
            else:
                self._start(devices)
            self._apply_defaults()
            after = self._after(before if running else {"running": False})
        result = {
            "changed": bool(self.actions),
            "actions": self.actions,
            "warnings": self.warnings,
            "state": "stopped" if state == "stopped" else "started",
            "pipe_directory": self.config["pipe_directory"],
            "log_directory": self.config["log_directory"],
            "devices": devices,
            "client_environment": self._client_environment(devices) if state != "stopped" else {},
            "diff": {"before": before, "after": after},
        }
        result.update(self._report(state != "stopped"))
        return result

    # -- status ---------------------------------------------------------------------------------------

    def _running(self):
        if self.control is None:
            return False
        if not os.path.isdir(self.config["pipe_directory"]):
            return False
        return self.control.is_running()

    def _snapshot(self, running):
        if not running:
            return {"running": False}
        return {"running": True, "defaults": self._live_defaults()}

    def _after(self, before):
        """The daemon's defaults after this run: read back, or in check mode predicted from `before`."""
        if not self.check_mode:
            return self._snapshot(True)
        if not before.get("running"):
            return {"running": True, "defaults": self._desired_defaults()}
        defaults = dict(before["defaults"])
        limits = dict(defaults.get("device_pinned_mem_limit") or {})
        limits.update(self.config["default_device_pinned_mem_limit"])
        defaults["device_pinned_mem_limit"] = limits
        for key in ("active_thread_percentage", "client_priority"):
            if self.config.get("default_" + key) is not None:
                defaults[key] = self.config["default_" + key]
        return {"running": True, "defaults": defaults}

    def _really_running(self):
        return self.control is not None and os.path.isdir(self.config["pipe_directory"]) and \
            self.control.is_running()

    def _desired_defaults(self):
        return {
            "active_thread_percentage": self.config.get("default_active_thread_percentage") or 100.0,
            "device_pinned_mem_limit": dict(self.config["default_device_pinned_mem_limit"]),
            "client_priority": self.config.get("default_client_priority") or 0,
        }

    def _live_defaults(self):
        limits = {}
        for device in sorted(self.config["default_device_pinned_mem_limit"]):
            value = self.control.get_limit(device)
            limits[device] = None if memory_limit_bytes(value) is None else value
        defaults = {"active_thread_percentage": self.control.get_percentage(), "device_pinned_mem_limit": limits,
                    "client_priority": None}
        try:
            defaults["client_priority"] = self.control.get_priority()
        except MpsError as exc:
            if exc.kind != "unsupported_command":
                raise
        return defaults

    def _report(self, want_running):
        report = {"running": False, "pid": None, "servers": [], "defaults": {}}
        if not want_running:
            return report
        if self.check_mode and not self._really_running():
            report.update(running=True, defaults=self._desired_defaults())
            return report
        report.update(running=True, pid=self.control.pid(), servers=self.control.servers(),
                      defaults=self._live_defaults())
        return report

    def _client_environment(self, devices):
        env = {"CUDA_MPS_PIPE_DIRECTORY": self.config["pipe_directory"],
               "CUDA_MPS_LOG_DIRECTORY": self.config["log_directory"]}
        limits = self.config["default_device_pinned_mem_limit"]
        if limits:
            env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join("%s=%s" % item for item in sorted(limits.items()))
        if self.config.get("default_active_thread_percentage") is not None:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = _number(self.config["default_active_thread_percentage"])
        return env

    # -- devices and compute mode ---------------------------------------------------------------------

    def _needs_nvml(self):
        return bool(self.config["devices"]) or self.config["compute_mode"] != "keep"

    def _resolve_devices(self):
        """[{uuid, type (gpu|mig), index, parent_uuid}] for `devices`; [] when the daemon sees every GPU."""
        if not self._needs_nvml():
            return []
        resolved = []
        with self.nvml_factory() as nvml:
            keys = self.config["devices"] or []
            for key in keys:
                key_text = str(key).strip()
                if key_text.upper().startswith("MIG-"):
                    parent, handle = nvml.mig_device_uuid_parent(key_text)
                    uuid = text(nvml.call("nvmlDeviceGetUUID", handle, what="read the UUID of %s" % key_text))
                    resolved.append({"uuid": uuid, "type": "mig", "index": None, "parent_uuid": parent.uuid,
                                     "parent_index": parent.index})
                else:
                    gpu = nvml.find(key)
                    if _mig_enabled(nvml, gpu):
                        raise MpsError("%s is in MIG mode: an MPS daemon serves MIG devices there; list its MIG "
                                       "devices (MIG-... UUIDs) in devices instead" % gpu.describe(),
                                       kind="invalid_selection")
                    resolved.append({"uuid": gpu.uuid, "type": "gpu", "index": gpu.index, "parent_uuid": None,
                                     "parent_index": None})
            seen = set()
            for entry in resolved:
                if entry["uuid"] in seen:
                    raise MpsError("device %s is listed twice in devices" % entry["uuid"], kind="invalid_selection")
                seen.add(entry["uuid"])
            if self.config["compute_mode"] != "keep":
                self._check_compute_mode_targets(nvml, resolved)
        return resolved

    def _check_compute_mode_targets(self, nvml, resolved):
        mig = [d["uuid"] for d in resolved if d["type"] == "mig"]
        if mig:
            raise MpsError("compute_mode %s cannot be applied to MIG devices (%s): NVML refuses EXCLUSIVE_PROCESS "
                           "on GPUs in MIG mode, where MPS runs one daemon per MIG device; use compute_mode: keep"
                           % (self.config["compute_mode"], ", ".join(mig)), kind="mig_mode")
        if not resolved:
            for gpu in nvml.select("all"):
                if _mig_enabled(nvml, gpu):
                    raise MpsError("compute_mode %s cannot be applied: %s is in MIG mode, where NVML refuses "
                                   "EXCLUSIVE_PROCESS and MPS runs one daemon per MIG device; list the GPUs this "
                                   "daemon serves in devices, or use compute_mode: keep"
                                   % (self.config["compute_mode"], gpu.describe()), kind="mig_mode")

    def _compute_mode_targets(self, nvml, devices):
        if devices:
            return [nvml.find(d["uuid"]) for d in devices if d["type"] == "gpu"]
        return nvml.select("all")

    def _apply_compute_mode(self, devices):
        if self.config["compute_mode"] == "keep":
            return
        wanted = COMPUTE_MODE_VALUES[self.config["compute_mode"]]
        record = self._read_state()
        with self.nvml_factory() as nvml:
            for gpu in self._compute_mode_targets(nvml, devices):
                current = nvml.call("nvmlDeviceGetComputeMode", gpu.handle, what="read the compute mode", gpu=gpu)
                if current == wanted:
                    continue
                self.actions.append("set the compute mode of %s from %s to %s"
                                    % (gpu.describe(), COMPUTE_MODES.get(current, current), COMPUTE_MODES[wanted]))
                if self.check_mode:
                    continue
                record.setdefault("compute_mode", {}).setdefault(gpu.uuid, {"original": current})["set"] = wanted
                self._write_state(record)
                nvml.call("nvmlDeviceSetComputeMode", gpu.handle, wanted, what="set the compute mode to %s"
                          % COMPUTE_MODES[wanted], gpu=gpu)

    def _restore_compute_mode(self):
        record = self._read_state()
        modes = record.get("compute_mode") or {}
        if modes:
            with self.nvml_factory() as nvml:
                for uuid, entry in sorted(modes.items()):
                    try:
                        gpu = nvml.find(uuid)
                    except NvmlError:
                        self.warnings.append("GPU %s is gone: its compute mode was not restored" % uuid)
                        continue
                    current = nvml.call("nvmlDeviceGetComputeMode", gpu.handle, what="read the compute mode",
                                        gpu=gpu)
                    if current == entry["original"]:
                        continue
                    if current != entry.get("set"):
                        self.warnings.append("the compute mode of %s was changed by someone else (now %s): left as "
                                             "it is" % (gpu.describe(), COMPUTE_MODES.get(current, current)))
                        continue
                    self.actions.append("restored the compute mode of %s to %s"
                                        % (gpu.describe(), COMPUTE_MODES.get(entry["original"], entry["original"])))
                    if not self.check_mode:
                        nvml.call("nvmlDeviceSetComputeMode", gpu.handle, entry["original"],
                                  what="restore the compute mode", gpu=gpu)
        if os.path.exists(self.state_path) and not self.check_mode:
            os.unlink(self.state_path)

    def _read_state(self):
        try:
            with open(self.state_path) as handle:
                data = json.load(handle)
            return data if isinstance(data, dict) else {}
        except (IOError, OSError, ValueError):
            return {}

    def _write_state(self, data):
        data["version"] = 1
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(data, handle, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.state_path)

    # -- start / stop -----------------------------------------------------------------------------------

    def _require_binary(self):
        if self.control is None:
            raise MpsError("%s was not found on the managed node: install the NVIDIA driver's CUDA MPS tools "
                           "(Debian/Ubuntu: nvidia-cuda-mps; CUDA repository: cuda-drivers), or give its path "
                           "in `binary`" % CONTROL_BINARY, kind="binary_missing")

    def _ensure_directories(self):
        owner = _owner(self.config.get("user"), self.config.get("group"))
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

    def _start(self, devices):
        self._require_binary()
        self._ensure_directories()
        self._apply_compute_mode(devices)
        argv = [self.binary, "-d"]
        if self.config.get("multiuser"):
            argv.append("-M")
        if self.config.get("user") and _user_differs(self.config["user"]):
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
        self.actions.append("start the MPS control daemon on %s%s" % (
            self.config["pipe_directory"], " for " + env["CUDA_VISIBLE_DEVICES"] if devices else ""))
        if self.check_mode:
            return
        rc, out, err = self.run(argv, env=env, data=None)
        out, err = text(out or ""), text(err or "")
        if rc != 0:
            self._start_failed("`%s -d` failed (rc %d): %s" % (CONTROL_BINARY, rc, (err or out).strip()))
        deadline = self.clock() + self.config["timeout"]
        while True:
            if self.control.is_running():
                return
            if self.clock() >= deadline:
                self._start_failed("the MPS control daemon did not come up on %s within %ss"
                                   % (self.config["pipe_directory"], self.config["timeout"]))
            self.sleep(0.2)

    def _start_failed(self, message):
        tail = log_tail(self.config["log_directory"])
        try:
            self._restore_compute_mode()
        except (MpsError, NvmlError) as exc:
            message += "; restoring the compute mode failed too: %s" % exc
        path = os.path.join(self.config["log_directory"], "control.log")
        raise MpsError("%s; last lines of %s:\n%s" % (message, path, "\n".join(tail)), kind="start_failed",
                       log_tail=tail)

    # -- the mps role's systemd unit (gpuops-mps@.service) runs these through gpuops_mps_helper.py ------

    def service_pre_start(self):
        """ExecStartPre: check the devices and set the compute mode (recorded for service_post_stop)."""
        if self.config["compute_mode"] != "keep":
            self._apply_compute_mode(self._resolve_devices())
        return self.actions

    def service_configure(self):
        """ExecStartPost / ExecReload: wait for the daemon, then apply the defaults that differ."""
        deadline = self.clock() + self.config["timeout"]
        while not self.control.is_running():
            if self.clock() >= deadline:
                self._start_failed("the MPS control daemon did not come up on %s within %ss"
                                   % (self.config["pipe_directory"], self.config["timeout"]))
            self.sleep(0.2)
        self._apply_defaults()
        return self.actions

    def service_stop(self):
        """ExecStop: `quit`, then wait for the daemon to exit."""
        if self.control.is_running():
            pid = self.control.pid()
            self.control.query("quit")
            self._wait_exit(pid)
            self.actions.append("stopped the MPS control daemon on %s" % self.config["pipe_directory"])
        return self.actions

    def service_post_stop(self):
        """ExecStopPost: restore the compute mode recorded at start."""
        self._restore_compute_mode()
        return self.actions

    def _stop(self, running, reason=None):
        if running:
            pid = self.control.pid()
            self.actions.append("stop the MPS control daemon on %s%s"
                                % (self.config["pipe_directory"], " (%s)" % reason if reason else ""))
            if not self.check_mode:
                try:
                    self.control.query("quit")
                except MpsError as exc:
                    if exc.kind != "not_running":
                        raise
                self._wait_exit(pid)
        elif not self.check_mode:
            self._remove_stale()
        self._restore_compute_mode()

    def _wait_exit(self, pid):
        deadline = self.clock() + self.config["timeout"]
        while True:
            alive = pid is not None and pid_alive(pid)
            if not alive and not self.control.is_running():
                return
            if self.clock() >= deadline:
                break
            self.sleep(0.2)
        if pid is not None and pid_alive(pid):
            self.warnings.append("the MPS control daemon (pid %d) ignored `quit` for %ss: sent SIGTERM"
                                 % (pid, self.config["timeout"]))
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
            for _attempt in range(25):
                if not pid_alive(pid):
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

    def _start_drift(self, devices):
        """What differs between the running daemon's start-time settings and the desired ones."""
        pid = self.control.pid()
        if pid is None:
            return []
        drift = []
        environ = _proc_environ(pid)
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
        cmdline = _proc_cmdline(pid)
        if cmdline is not None:
            multiuser = "-M" in cmdline or "--multiuser-server" in cmdline
            if multiuser != bool(self.config.get("multiuser")):
                drift.append("multiuser (%s)" % multiuser)
        if self.config.get("user"):
            owner = _owner(self.config["user"], None)
            uid = _proc_uid(pid)
            if owner and uid is not None and uid != owner[0]:
                drift.append("user (uid %d)" % uid)
        return drift

    def _apply_defaults(self):
        if self.check_mode and not self._really_running():
            wanted = self._desired_defaults()
            for name, value in (("active thread percentage", self.config.get("default_active_thread_percentage")),
                                ("client priority", self.config.get("default_client_priority"))):
                if value is not None:
                    self.actions.append("set the default %s to %s" % (name, value))
            for device, value in sorted(wanted["device_pinned_mem_limit"].items()):
                self.actions.append("set the default pinned memory limit of device %s to %s" % (device, value))
            return
        percentage = self.config.get("default_active_thread_percentage")
        if percentage is not None:
            current = self.control.get_percentage()
            if current is None or abs(current - percentage) > 0.05:
                self.actions.append("set the default active thread percentage from %s to %s"
                                    % (current, _number(percentage)))
                if not self.check_mode:
                    self.control.set_percentage(percentage)
                    self._verify("active thread percentage", self.control.get_percentage(),
                                 lambda got: got is not None and abs(got - percentage) <= 0.05, percentage)
        for device, value in sorted(self.config["default_device_pinned_mem_limit"].items()):
            current = self.control.get_limit(device)
            if memory_limit_bytes(current) != memory_limit_bytes(value):
                self.actions.append("set the default pinned memory limit of device %s from %s to %s"
                                    % (device, current, value))
                if not self.check_mode:
                    self.control.set_limit(device, value)
                    self._verify("pinned memory limit of device %s" % device, self.control.get_limit(device),
                                 lambda got, v=value: memory_limit_bytes(got) == memory_limit_bytes(v), value)
        priority = self.config.get("default_client_priority")
        if priority is not None:
            current = self.control.get_priority()
            if current != priority:
                self.actions.append("set the default client priority from %s to %d" % (current, priority))
                if not self.check_mode:
                    self.control.set_priority(priority)
                    self._verify("client priority", self.control.get_priority(), lambda got: got == priority,
                                 priority)

    @staticmethod
    def _verify(what, got, ok, wanted):
        if not ok(got):
            raise MpsError("the MPS control daemon did not take the default %s: set %s, reads back %s"
                           % (what, wanted, got), kind="not_applied")


# -- helpers ---------------------------------------------------------------------------------------------

def _mig_enabled(nvml, gpu):
    mode = nvml.mig_mode(gpu)
    return bool(mode and mode[0])


def _owner(user, group):
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
    owner = _owner(user, None)
    return owner is not None and owner[0] != os.geteuid()


def _proc_environ(pid):
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


def _proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [arg.decode("utf-8", "replace") for arg in handle.read().split(b"\0") if arg]
    except (IOError, OSError):
        return None


def _proc_uid(pid):
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (IOError, OSError, ValueError, IndexError):
        return None
    return None


def subprocess_runner(argv, env=None, data=None):
    """A `run` for callers without Ansible (the role's systemd helper): no shell, environment merged."""
    import subprocess
    merged = dict(os.environ)
    merged.update(env or {})
    process = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=merged, close_fds=True)
    out, err = process.communicate(data.encode() if data is not None else None)
    return process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
