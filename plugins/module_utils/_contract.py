# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The desired-state contract every engine shares. Plain Python: no Ansible imports.

* `GpuopsError`: the one failure type. Every engine error derives from it and turns into the one failure
  payload, `{msg, error_kind, nvml_code (where NVML answered), ...details}`, through `payload()`.
* `check_options(spec, params)`: applies an engine's argument spec (the same dict the module hands to
  AnsibleModule) to a plain dict, for front ends that have no AnsibleModule: the roles' boot and systemd
  helpers read JSON that the roles wrote from their variables, and run it through the same spec and the same
  engine validator as the module.
* `SELECTOR_SPEC` and `check_selector()`: the one device selector (`devices`, `device_filter`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import os
import re

PCI_DEVICE_ID_PATTERN = re.compile(r"^0x[0-9a-fA-F]{8}(:0x[0-9a-fA-F]{8})?$")

_TRUE = ("yes", "on", "1", "true", "y", "t")
_FALSE = ("no", "off", "0", "false", "n", "f")


class GpuopsError(Exception):
    """A failure with an actionable message.

    `kind` is a stable keyword (returned as `error_kind`), `nvml_code` the nvmlReturn_t when NVML answered,
    `details` extra result keys (what was changed before the failure, the daemon's log tail, ...).
    """

    def __init__(self, message, kind="error", nvml_code=None, details=None):
        super(GpuopsError, self).__init__(message)
        self.message = message
        self.kind = kind
        self.nvml_code = nvml_code
        self.details = dict(details or {})

    def payload(self):
        """The failure result every module returns: details, then msg, error_kind and nvml_code."""
        result = dict(self.details)
        result["msg"] = self.message
        result["error_kind"] = self.kind
        if self.nvml_code is not None:
            result["nvml_code"] = self.nvml_code
        return result


def invalid(message, **details):
    return GpuopsError(message, kind="invalid_argument", details=details)


# -- the device selector ---------------------------------------------------------------------------------

SELECTOR_SPEC = {
    "devices": {"type": "raw", "default": "all"},
    "device_filter": {"type": "list", "elements": "str"},
}


def parse_devices(value):
    """`all`, a list, or the string forms ad-hoc use produces (`0,1`, `[0, 1]`) -> `all` or a list."""
    if value is None or value == "all" or value == ["all"]:
        return "all"
    if isinstance(value, bool) or not isinstance(value, (str, int, list, tuple)):
        raise GpuopsError("devices must be `all` or a list of GPU indices, UUIDs or PCI bus ids; got %r" % (value,),
                          kind="invalid_selection")
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        stripped = value.strip().strip("[]")
        items = [item.strip().strip("'\"") for item in stripped.split(",") if item.strip()]
        return "all" if items == ["all"] else items
    items = list(value)
    if not items:
        raise GpuopsError("devices is empty: give `all` or a list of GPU indices, UUIDs or PCI bus ids",
                          kind="invalid_selection")
    return items


def check_device_filter(device_filter, where="device_filter"):
    """mig-parted's `0xDDDDVVVV[:0xSSSSVVVV]` ids; raises for anything else (naming `where`)."""
    bad = [f for f in device_filter or [] if not PCI_DEVICE_ID_PATTERN.match(str(f))]
    if bad:
        raise GpuopsError("%s entries must be PCI device ids such as 0x233010DE (device id then vendor id 10DE), "
                          "optionally :0xSSSSVVVV for the subsystem; got %s" % (where, ", ".join(repr(b) for b in bad)),
                          kind="invalid_selection")
    return list(device_filter) if device_filter else None


def check_selector(params):
    """Normalize `devices` and `device_filter` in place (no NVML needed); returns params."""
    params["devices"] = parse_devices(params.get("devices", "all"))
    params["device_filter"] = check_device_filter(params.get("device_filter"))
    return params


# -- applying an argument spec without Ansible ----------------------------------------------------------

def _convert(name, value, option):
    kind = option.get("type", "str")
    if value is None:
        return None
    if kind == "raw":
        return value
    if kind in ("str", "path"):
        if isinstance(value, (dict, list, tuple)):
            raise ValueError("a string")
        value = value if isinstance(value, str) else str(value)
        return os.path.expanduser(value) if kind == "path" else value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in _TRUE:
            return True
        if str(value).strip().lower() in _FALSE:
            return False
        raise ValueError("true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("a whole number")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("a whole number")
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError("a whole number")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("a number")
    if kind == "list":
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        element = option.get("elements")
        if element:
            return [_convert(name, item, {"type": element}) for item in value]
        return list(value)
    if kind == "dict":
        if not isinstance(value, dict):
            raise ValueError("a mapping")
        return dict(value)
    raise ValueError("a value of type %s" % kind)


def check_options(spec, params, where=None):
    """Apply `spec` (an Ansible argument spec: type, elements, choices, default, required) to `params`.

    Returns a new dict with every option of the spec, converted and defaulted as AnsibleModule would. Raises
    GpuopsError (kind invalid_argument) naming every unknown option, wrong type and value outside the choices,
    with what is valid, so a JSON file written by a role fails as clearly as a module task.
    """
    prefix = "%s: " % where if where else ""
    params = dict(params or {})
    problems = []
    unknown = sorted(set(params) - set(spec) - set(k for k in params if k.startswith("_")))
    if unknown:
        problems.append("unknown option(s) %s; valid options: %s" % (", ".join(unknown), ", ".join(sorted(spec))))
    result = {}
    for name in sorted(spec):
        option = spec[name]
        value = params.get(name)
        if value is None:
            if option.get("required"):
                problems.append("%s is required" % name)
            result[name] = copy.deepcopy(option.get("default"))
            continue
        try:
            value = _convert(name, value, option)
        except ValueError as exc:
            problems.append("%s must be %s, got %r" % (name, exc, value))
            continue
        choices = option.get("choices")
        if choices is not None:
            values = value if isinstance(value, list) else [value]
            wrong = [v for v in values if v not in choices]
            if wrong:
                problems.append("%s: %s is not one of %s"
                                % (name, ", ".join(repr(w) for w in wrong), ", ".join(str(c) for c in choices)))
                continue
        result[name] = value
    if problems:
        raise invalid(prefix + "; ".join(problems))
    return result


def argument_spec(*specs):
    """A deep copy of the merged specs, for AnsibleModule (which must not share the engine's dicts)."""
    merged = {}
    for spec in specs:
        merged.update(copy.deepcopy(spec))
    return merged
