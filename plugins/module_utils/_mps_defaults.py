# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""An MPS daemon's defaults (active thread percentage, pinned memory limits, client priority). Plain Python.

Read live through the control, set only where they differ (memory compared in bytes), read back after each set;
in check mode predicted instead. The defaults apply to MPS servers started afterwards.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_spec import MpsError, memory_limit_bytes, number_text


class DaemonDefaults:
    """The defaults of one running daemon; appends what it does (or would do) to the caller's actions."""

    def __init__(self, config, control, check_mode, actions, running):
        self.config = config
        self.control = control
        self.check_mode = check_mode
        self.actions = actions
        self.running = running

    def snapshot(self, running):
        if not running:
            return {"running": False}
        return {"running": True, "defaults": self.live()}

    def after(self, before):
        """The daemon's defaults after this run: read back, or in check mode predicted from `before`."""
        if not self.check_mode:
            return self.snapshot(True)
        if not before.get("running"):
            return {"running": True, "defaults": self.desired()}
        defaults = dict(before["defaults"])
        limits = dict(defaults.get("device_pinned_mem_limit") or {})
        limits.update(self.config["default_device_pinned_mem_limit"])
        defaults["device_pinned_mem_limit"] = limits
        for key in ("active_thread_percentage", "client_priority"):
            if self.config.get("default_" + key) is not None:
                defaults[key] = self.config["default_" + key]
        return {"running": True, "defaults": defaults}

    def desired(self):
        return {
            "active_thread_percentage": self.config.get("default_active_thread_percentage") or 100.0,
            "device_pinned_mem_limit": dict(self.config["default_device_pinned_mem_limit"]),
            "client_priority": self.config.get("default_client_priority") or 0,
        }

    def live(self):
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

    def apply(self):
        if self.check_mode and not self.running():
            wanted = self.desired()
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
                                    % (current, number_text(percentage)))
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
