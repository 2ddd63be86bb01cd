# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""mig-parted v1 configuration files, read as strictly as mig-parted reads them. Plain Python.

```yaml
version: v1
mig-configs:
  balanced:
    - device-filter: ["0x233010DE"]     # optional: string or list
      devices: all                      # all | [index, ...]
      mig-enabled: true
      mig-devices: {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}
```
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import traceback

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError, check_device_filter

try:
    import yaml
except ImportError:
    yaml = None
    YAML_IMPORT_ERROR = traceback.format_exc()
else:
    YAML_IMPORT_ERROR = None

TOP_KEYS = ("version", "mig-configs")
ENTRY_KEYS = ("device-filter", "devices", "mig-enabled", "mig-devices")


class ConfigError(GpuopsError):
    """A mig-parted config that cannot be read or is not valid: error_kind `invalid_config` (or `pyyaml_missing`)."""

    def __init__(self, message, kind="invalid_config", details=None):
        super(ConfigError, self).__init__(message, kind=kind, details=details)


def _int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def parse_document(text, source="config file"):
    """The YAML document of a mig-parted config, not yet validated (validate() does that).

    Without PyYAML, a document written as JSON (which is YAML, and which mig-parted reads too) is still read:
    the mig role ships the config it parsed on the controller that way, so nodes need no PyYAML.
    """
    if yaml is None:
        try:
            return json.loads(text)
        except ValueError:
            raise ConfigError("reading %s needs PyYAML on the managed node (python3-yaml); it is not installed "
                              "(a config written as JSON, which is YAML too, needs none)" % source,
                              kind="pyyaml_missing", details={"exception": YAML_IMPORT_ERROR})
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("%s is not valid YAML: %s" % (source, exc))


def parse(text, source="config file"):
    """Parse and validate a mig-parted v1 document; returns {name: [entry, ...]}."""
    return validate(parse_document(text, source), source)


def decode(data, source="config file"):
    """The text of a config file's bytes; ConfigError naming the file unless they are UTF-8 (a BOM is allowed)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("%s is not UTF-8 text (byte 0x%02X at offset %d is not valid UTF-8): a mig-parted config "
                          "is a YAML (or JSON) text file" % (source, bytearray(data)[exc.start], exc.start))


def read(path):
    """The YAML document of the mig-parted config file `path`, not yet validated."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError) as exc:
        raise ConfigError("cannot read mig-parted config %s: %s" % (path, exc))
    return parse_document(decode(data, path), path)


def load(path):
    """Read and validate the mig-parted config file `path`; returns {name: [entry, ...]}."""
    return validate(read(path), path)


def validate(data, source="config file"):
    if not isinstance(data, dict):
        raise ConfigError("%s is not a mig-parted v1 config: expected a mapping with keys version and "
                          "mig-configs" % source)
    unknown = sorted(str(k) for k in data if k not in TOP_KEYS)
    if unknown:
        raise ConfigError("%s: unknown top-level key(s) %s; a mig-parted v1 config has only %s"
                          % (source, ", ".join(unknown), ", ".join(TOP_KEYS)))
    if "version" not in data:
        raise ConfigError("%s is not a mig-parted v1 config: `version: v1` is missing" % source)
    if data["version"] != "v1":
        raise ConfigError("%s: unsupported version %r; only v1 is supported" % (source, data["version"]))
    configs = data.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        raise ConfigError("%s: mig-configs must be a non-empty mapping of config name to a list of entries"
                          % source)
    result = {}
    for name, entries in configs.items():
        where = "%s: mig-configs.%s" % (source, name)
        if not isinstance(entries, list) or not entries:
            raise ConfigError("%s must be a non-empty list of entries" % where)
        result[str(name)] = [_entry(entry, "%s[%d]" % (where, i)) for i, entry in enumerate(entries)]
    return result


def _entry(entry, where):
    if not isinstance(entry, dict):
        raise ConfigError("%s must be a mapping with keys %s" % (where, ", ".join(ENTRY_KEYS)))
    unknown = sorted(str(k) for k in entry if k not in ENTRY_KEYS)
    if unknown:
        raise ConfigError("%s: unknown key(s) %s; allowed: %s" % (where, ", ".join(unknown), ", ".join(ENTRY_KEYS)))
    for key in ("devices", "mig-enabled"):
        if key not in entry:
            raise ConfigError("%s: %s is required" % (where, key))
    device_filter = entry.get("device-filter")
    if device_filter is not None:
        if isinstance(device_filter, str):
            device_filter = [device_filter]
        if not isinstance(device_filter, list) or not all(isinstance(f, str) for f in device_filter):
            raise ConfigError("%s: device-filter must be a string or a list of strings such as 0x233010DE" % where)
        try:
            # the same rule as the device_filter option: a value that is no PCI id would silently select nothing
            device_filter = check_device_filter(device_filter, "%s: device-filter" % where)
        except GpuopsError as exc:
            raise ConfigError(exc.message)
    devices = entry["devices"]
    if devices != "all":
        if not isinstance(devices, list) or not devices or not all(_int(d) and d >= 0 for d in devices):
            raise ConfigError("%s: devices must be `all` or a non-empty list of GPU indices, got %r"
                              % (where, devices))
    enabled = entry["mig-enabled"]
    if not isinstance(enabled, bool):
        raise ConfigError("%s: mig-enabled must be true or false, got %r" % (where, enabled))
    mig_devices = entry.get("mig-devices")
    if mig_devices is None:
        if enabled:
            raise ConfigError("%s: mig-devices is required when mig-enabled is true ({} for mode only)" % where)
        mig_devices = {}
    if not isinstance(mig_devices, dict):
        raise ConfigError("%s: mig-devices must be a mapping of MIG profile to count" % where)
    for key, count in mig_devices.items():
        if not _int(count) or count < 0:
            raise ConfigError("%s: mig-devices count for %s must be a non-negative integer, got %r"
                              % (where, key, count))
    mig_devices = dict((str(k), v) for k, v in mig_devices.items() if v)
    if not enabled and mig_devices:
        raise ConfigError("%s: mig-devices must be empty when mig-enabled is false" % where)
    return {"device_filter": device_filter, "devices": devices, "mig_enabled": enabled, "mig_devices": mig_devices}


def select_config(configs, name, source="config file"):
    """The entries of config `name` (or of the only config when name is None)."""
    if name is None:
        if len(configs) == 1:
            return list(configs.values())[0]
        raise ConfigError("%s has several configs (%s): choose one with config_name"
                          % (source, ", ".join(sorted(configs))))
    if name not in configs:
        raise ConfigError("config %r is not in %s; it has: %s" % (name, source, ", ".join(sorted(configs))))
    return configs[name]


def match_entries(entries, gpus, config_name="config"):
    """([(gpu, position, entry)] for the GPUs the entries select, [[gpu index, ...] per entry]).

    The second list says which of `gpus` each entry selected, so an entry that selects none can be reported.
    A GPU selected by two entries is an error.
    """
    chosen = {}
    selected = []
    for position, entry in enumerate(entries):
        selected.append([])
        for gpu in gpus:
            if entry["devices"] != "all" and gpu.index not in entry["devices"]:
                continue
            if entry["device_filter"] and not gpu.matches_filter(entry["device_filter"]):
                continue
            if gpu.index in chosen:
                raise ConfigError("GPU %d is selected by entries %d and %d of config %s: make the entries "
                                  "disjoint" % (gpu.index, chosen[gpu.index][0], position, config_name))
            chosen[gpu.index] = (position, entry)
            selected[position].append(gpu.index)
    return [(gpu,) + chosen[gpu.index] for gpu in gpus if gpu.index in chosen], selected


def targets_for(entries, gpus, config_name="config"):
    """[(gpu, entry)] for the GPUs the entries select; a GPU selected by two entries is an error."""
    return [(gpu, entry) for gpu, _unused, entry in match_entries(entries, gpus, config_name)[0]]


def describe_entry(entry):
    """`device-filter 0x20B210DE, devices all`: what an entry selects by."""
    devices = "all" if entry["devices"] == "all" else "[%s]" % ", ".join(str(d) for d in entry["devices"])
    device_filter = ", ".join(entry["device_filter"]) if entry["device_filter"] else "none"
    return "device-filter %s, devices %s" % (device_filter, devices)
