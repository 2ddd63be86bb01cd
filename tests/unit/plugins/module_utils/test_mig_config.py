"""mig-parted v1 config files: strict parsing, config selection, entry -> GPU matching."""

from __future__ import annotations

import json

import pytest

from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_config as mig_config
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import Gpu

GOOD = """
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
      mig-devices: {}
  balanced:
    - device-filter: ["0x233010DE"]
      devices: all
      mig-enabled: true
      mig-devices:
        "3g.40gb": 1
        "2g.20gb": 1
        "1g.10gb": 1
    - device-filter: "0x20B010DE"
      devices: [2]
      mig-enabled: true
      mig-devices:
        "1c.3g.20gb": 3
"""


def gpu(index, device_id):
    return Gpu(index, "GPU-%d" % index, "00000000:%02X:00.0" % (0x18 + index), device_id, "0x16C110DE",
               "gpu", None)


def test_good_file():
    configs = mig_config.parse(GOOD)
    assert sorted(configs) == ["all-disabled", "balanced"]
    balanced = configs["balanced"]
    assert balanced[0]["device_filter"] == ["0x233010DE"]
    assert balanced[1]["device_filter"] == ["0x20B010DE"]
    assert balanced[1]["devices"] == [2]
    assert balanced[0]["mig_devices"] == {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}
    assert configs["all-disabled"][0] == {"device_filter": None, "devices": "all", "mig_enabled": False,
                                          "mig_devices": {}}


def test_entries_select_gpus():
    entries = mig_config.select_config(mig_config.parse(GOOD), "balanced")
    gpus = [gpu(0, "0x233010DE"), gpu(1, "0x233010DE"), gpu(2, "0x20B010DE"), gpu(3, "0x20B010DE")]
    chosen = mig_config.targets_for(entries, gpus, "balanced")
    assert [(g.index, e["mig_devices"]) for g, e in chosen] == [
        (0, {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}), (1, {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}),
        (2, {"1c.3g.20gb": 3})]


def test_overlapping_entries_are_an_error():
    configs = mig_config.parse("""
version: v1
mig-configs:
  c:
    - {devices: all, mig-enabled: true, mig-devices: {}}
    - {devices: [0], mig-enabled: false}
""")
    with pytest.raises(mig_config.ConfigError, match="GPU 0 is selected by entries 0 and 1"):
        mig_config.targets_for(configs["c"], [gpu(0, "0x233010DE")], "c")


def test_only_config_is_chosen_automatically_and_names_are_listed():
    configs = mig_config.parse(GOOD)
    with pytest.raises(mig_config.ConfigError, match="several configs .all-disabled, balanced."):
        mig_config.select_config(configs, None)
    with pytest.raises(mig_config.ConfigError, match="'nope' is not in .*it has: all-disabled, balanced"):
        mig_config.select_config(configs, "nope")
    single = {"only": configs["balanced"]}
    assert mig_config.select_config(single, None) is configs["balanced"]


@pytest.mark.parametrize("text, words", [
    ("- 1\n- 2\n", "not a mig-parted v1 config"),
    ("mig-configs: {a: [{devices: all, mig-enabled: false}]}\n", "`version: v1` is missing"),
    ("version: v2\nmig-configs: {a: [{devices: all, mig-enabled: false}]}\n", "unsupported version 'v2'"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: false}]}\nextra: 1\n", "unknown top-level key(s) extra"),
    ("version: v1\n", "mig-configs must be a non-empty mapping"),
    ("version: v1\nmig-configs: {a: []}\n", "non-empty list of entries"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: false, flavour: x}]}\n", "unknown key(s) flavour"),
    ("version: v1\nmig-configs: {a: [{mig-enabled: false}]}\n", "devices is required"),
    ("version: v1\nmig-configs: {a: [{devices: all}]}\n", "mig-enabled is required"),
    ("version: v1\nmig-configs: {a: [{devices: some, mig-enabled: false}]}\n", "devices must be `all`"),
    ("version: v1\nmig-configs: {a: [{devices: [-1], mig-enabled: false}]}\n", "devices must be `all`"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: 'yes'}]}\n", "mig-enabled must be true or false"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true}]}\n", "mig-devices is required"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: false, mig-devices: {1g.10gb: 1}}]}\n",
     "must be empty when mig-enabled is false"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, mig-devices: {1g.10gb: x}}]}\n",
     "non-negative integer"),
    ("version: v1\nmig-configs: {a: [{device-filter: 5, devices: all, mig-enabled: false}]}\n",
     "device-filter must be a string or a list"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, mig-devices: [1]}]}\n",
     "mig-devices must be a mapping"),
    ("version: [v1\n", "not valid YAML"),
    ("version: v1\nmig-configs: {a: [{device-filter: '0xZZZ', devices: all, mig-enabled: false}]}\n",
     "test.yaml: mig-configs.a[0]: device-filter entries must be PCI device ids such as 0x233010DE"),
    ("version: v1\nmig-configs: {a: [{device-filter: ['0x233010DE', 'A100'], devices: all, mig-enabled: false}]}\n",
     "got 'A100'"),
])
def test_strict_errors(text, words):
    with pytest.raises(mig_config.ConfigError) as info:
        mig_config.parse(text, "test.yaml")
    assert words in info.value.message


def test_zero_counts_are_dropped():
    configs = mig_config.parse("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, "
                               "mig-devices: {1g.10gb: 0, 2g.20gb: 1}}]}\n")
    assert configs["a"][0]["mig_devices"] == {"2g.20gb": 1}


def test_missing_file(tmp_path):
    with pytest.raises(mig_config.ConfigError, match="cannot read mig-parted config"):
        mig_config.load(str(tmp_path / "absent.yaml"))


def test_without_pyyaml(monkeypatch):
    with_yaml = mig_config.parse(GOOD)
    monkeypatch.setattr(mig_config, "yaml", None)
    with pytest.raises(mig_config.ConfigError, match="needs PyYAML") as info:
        mig_config.parse(GOOD)
    assert info.value.kind == "pyyaml_missing"
    # the same config written as JSON (what the mig role ships to the node) needs no PyYAML
    document = {"version": "v1", "mig-configs": {
        "all-disabled": [{"devices": "all", "mig-enabled": False, "mig-devices": {}}],
        "balanced": [{"device-filter": ["0x233010DE"], "devices": "all", "mig-enabled": True,
                      "mig-devices": {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}},
                     {"device-filter": "0x20B010DE", "devices": [2], "mig-enabled": True,
                      "mig-devices": {"1c.3g.20gb": 3}}]}}
    assert mig_config.parse(json.dumps(document, indent=2)) == with_yaml


def test_device_filter_accepts_what_the_option_accepts():
    configs = mig_config.parse("version: v1\nmig-configs: {a: [{device-filter: ['0x233010de', "
                               "'0x20B010DE:0x134F10DE'], devices: all, mig-enabled: false}]}\n")
    assert configs["a"][0]["device_filter"] == ["0x233010de", "0x20B010DE:0x134F10DE"]


@pytest.mark.parametrize("data, offset", [(b"\xff\xfeversion", 0), (b"version: v1\n\xe9\n", 12)])
def test_a_file_that_is_not_utf8_is_named(tmp_path, data, offset):
    path = tmp_path / "binary.yaml"
    path.write_bytes(data)
    with pytest.raises(mig_config.ConfigError) as info:
        mig_config.load(str(path))
    assert info.value.kind == "invalid_config"
    assert info.value.message.startswith("%s is not UTF-8 text (byte 0x%02X at offset %d" % (path, data[offset], offset))


def test_a_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert mig_config.load(str(path)) == mig_config.parse(GOOD)


def test_match_entries_reports_what_each_entry_selects():
    entries = mig_config.select_config(mig_config.parse(GOOD), "balanced")
    gpus = [gpu(0, "0x233010DE"), gpu(1, "0x233010DE")]
    chosen, selected = mig_config.match_entries(entries, gpus, "balanced")
    assert [(g.index, position) for g, position, _unused in chosen] == [(0, 0), (1, 0)]
    assert selected == [[0, 1], []]
    assert mig_config.describe_entry(entries[1]) == "device-filter 0x20B010DE, devices [2]"
