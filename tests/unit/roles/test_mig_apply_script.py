"""roles/mig/files/gpuops-mig-apply.py (the boot script of the mig role) on the NVML simulator."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "mig", "files", "gpuops-mig-apply.py")
H100 = "0x233010DE"


@pytest.fixture
def script(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUOPS_MIG_LOCK_FILE", str(tmp_path / "mig.lock"))
    spec = importlib.util.spec_from_file_location("gpuops_mig_apply", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def desired(tmp_path):
    def write(**fields):
        # What the mig role writes: its variables under the nvidia_mig option names.
        state = {"mode": None, "layout": None, "config_file": None, "config_name": None, "devices": "all",
                 "device_filter": [], "reset": "if_needed", "allow_busy_kept_instances": False,
                 "lock_file": None, "lock_timeout": 5}
        state.update(fields)
        path = tmp_path / "mig.json"
        path.write_text(json.dumps(state))
        return str(path)
    return write


def run(script, capsys, *argv):
    rc = script.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_applies_logs_verifies_and_is_idempotent(script, sim, desired, capsys):
    sim.create("h100-80gb:2,a100-40gb:1")
    state = desired(layout={"3g.40gb": 2}, device_filter=[H100])
    rc, out, err = run(script, capsys, "--state", state)
    assert rc == 0, err
    assert "GPU 0: enable MIG mode" in out and "GPU 1: create GPU instance 3g.40gb at memory slices 4-7" in out
    assert "GPU 2" not in out
    assert "verified: 2 GPU(s) match the desired layout (changed)" in out
    rc, out, err = run(script, capsys, "--state", state)
    assert rc == 0 and "layout already in place: nothing to do" in out


def test_reapplies_after_reboot(script, sim, desired, capsys):
    sim.create("h100-80gb:1")
    state = desired(layout={"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1})
    assert run(script, capsys, "--state", state)[0] == 0
    sim.reboot()  # drops the instances and, on Hopper, the MIG mode
    rc, out, err = run(script, capsys, "--check", "--state", state)
    assert rc == 0 and "check mode" in out and "GPU 0: enable MIG mode" in out
    rc, out, err = run(script, capsys, "--state", state)
    assert rc == 0, err
    assert "GPU 0: enable MIG mode" in out and "verified" in out
    assert "3g.40gb" in out.splitlines()[-2] and "1g.10gb" in out.splitlines()[-2]


def test_mig_parted_config(script, sim, desired, capsys):
    sim.create("h100-80gb:2")
    config = {"version": "v1", "mig-configs": {
        "mixed": [{"devices": [0], "mig-enabled": True, "mig-devices": {"7g.80gb": 1}},
                  {"devices": [1], "mig-enabled": True, "mig-devices": {"1g.10gb": 7}}],
        "off": [{"devices": "all", "mig-enabled": False}]}}
    # the parsed config is embedded (the node needs no PyYAML); config_file is only its name there
    rc, out, err = run(script, capsys, "--state", desired(config_file="/etc/gpuops/mig-parted.yaml",
                                                          config_name="mixed", _mig_parted_config=config))
    assert rc == 0, err
    assert "config mixed of /etc/gpuops/mig-parted.yaml" in out
    assert "create GPU instance 7g.80gb" in out and out.count("GPU 1: create GPU instance 1g.10gb") == 7
    rc, out, err = run(script, capsys, "--state", desired(config_file="f.yaml", _mig_parted_config=config))
    assert rc == 2 and "several configs" in err and "kind invalid_config" in err


def test_mig_parted_config_file_without_embedded_copy(script, sim, desired, capsys, tmp_path):
    sim.create("h100-80gb:1")
    path = tmp_path / "mig-parted.yaml"
    path.write_text("version: v1\nmig-configs:\n  one:\n    - devices: all\n      mig-enabled: true\n"
                    "      mig-devices: {3g.40gb: 2}\n")
    rc, out, err = run(script, capsys, "--state", desired(config_file=str(path)))
    assert rc == 0, err
    assert out.count("create GPU instance 3g.40gb") == 2 and "verified" in out


@pytest.mark.parametrize("fields, words", [
    ({"layout": {"3g.40gb": 1}, "config_file": "/x.yaml"}, "layout and config_file are mutually exclusive"),
    ({"mode": "disabled", "layout": {"3g.40gb": 1}}, "MIG devices need MIG enabled"),
    ({"layout": {"3g.40gb": 0}}, "positive integer"),
    ({"layout": {"3g.40gb": 1}, "colour": "red"}, "unknown option(s) colour"),
    ({"layout": {"3g.40gb": 1}, "device_filter": ["H100"]}, "0x233010DE"),
    ({"config_name": "a", "mode": "enabled"}, "config_name requires config_file"),
    ({"mode": "enabled", "_mig_parted_config": {"version": "v1"}},
     "_mig_parted_config (a parsed mig-parted config) requires config_file"),
    ({"config_file": "/x.yaml", "_mig_parted_config": {"version": "v2", "mig-configs": {}}}, "only v1"),
])
def test_the_state_is_checked_by_the_modules_validator(script, sim, desired, capsys, fields, words):
    sim.create("h100-80gb:1")
    rc, out, err = run(script, capsys, "--state", desired(**fields))
    assert rc == 2 and "invalid desired MIG state" in err and words in err, err
    assert sim.writes() == []


def test_does_not_fit_fails_visibly_without_change(script, sim, desired, capsys):
    sim.create("h100-80gb:1")
    rc, out, err = run(script, capsys, "--state", desired(layout={"7g.80gb": 2}))
    assert rc == 1
    assert "cannot fit" in err and "nothing was changed" in err
    assert sim.writes() == []


def test_busy_gpu_fails(script, sim, desired, capsys):
    sim.create("h100-80gb:1")
    sim.add_process(gpu=0, pid=777, name="trainer")
    rc, out, err = run(script, capsys, "--state", desired(layout={"3g.40gb": 1}))
    assert rc == 1 and "777 (trainer)" in err


def test_ampere_reset_impossible_exits_3(script, sim, desired, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    sim.create("a100-40gb:1")
    rc, out, err = run(script, capsys, "--state", desired(layout={"1g.5gb": 7}))
    assert rc == 3
    assert "waits for a GPU reset or a reboot" in err and "NOT applied" in err


def test_missing_state_file(script, sim, capsys, tmp_path):
    sim.create("h100-80gb:1")
    rc, out, err = run(script, capsys, "--state", str(tmp_path / "absent.json"))
    assert rc == 2 and "cannot read the desired MIG state" in err
    (tmp_path / "list.json").write_text("[]")
    rc, out, err = run(script, capsys, "--state", str(tmp_path / "list.json"))
    assert rc == 2 and "not a gpuops mig state file" in err


def test_logs_which_devices_are_kept(script, sim, desired, capsys):
    sim.create("h100-80gb:1")
    assert run(script, capsys, "--state", desired(layout={"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}))[0] == 0
    rc, out, err = run(script, capsys, "--state", desired(layout={"3g.40gb": 2}))
    assert rc == 0, err
    assert "1 MIG device(s) kept, 2 destroyed, 1 created" in out
    assert "same UUID: its clients are not disturbed" in out


def test_config_entry_that_selects_nothing_is_a_warning(script, sim, desired, capsys):
    sim.create("h100-80gb:1")
    config = {"version": "v1", "mig-configs": {"c": [
        {"device-filter": "0x233010DE", "devices": "all", "mig-enabled": True, "mig-devices": {"7g.80gb": 1}},
        {"device-filter": "0x20B010DE", "devices": "all", "mig-enabled": True, "mig-devices": {"7g.40gb": 1}}]}}
    rc, out, err = run(script, capsys, "--state", desired(config_file="/etc/gpuops/mig-parted.yaml",
                                                          _mig_parted_config=config))
    assert rc == 0, err
    assert "config entry 0 selects GPU(s): 0" in out and "config entry 1 selects GPU(s): none" in out
    assert "warning: entry 1 of config c (device-filter 0x20B010DE, devices all) selects no GPU" in err


def test_a_fault_after_the_last_write_is_reported_as_a_change(script, sim, desired, capsys):
    sim.create("h100-80gb:1")
    sim.fault("nvmlDeviceGetMaxMigDeviceCount", call=1, code=999)  # the first read of MIG devices: the read-back
    rc, out, err = run(script, capsys, "--state", desired(layout={"7g.80gb": 1}))
    assert rc == 1
    assert "was changed (all 3 planned step(s) ran) but could not be read back" in err
    assert "GPU 0: changed, not confirmed (could not be read back)" in err
    rc, out, err = run(script, capsys, "--state", desired(layout={"7g.80gb": 1}))
    assert rc == 0 and "layout already in place" in out


RESETS_ONCE = """#!/bin/sh
if [ -e "%(flag)s" ]; then echo "reset refused" >&2; exit 3; fi
touch "%(flag)s"
PYTHONPATH="%(simulator)s" exec "%(python)s" -m gpuops_nvml_sim reset "$3"
"""


def test_an_unfinished_ampere_rollback_names_the_command(script, sim, desired, capsys, monkeypatch, tmp_path):
    """The forward reset works and the rollback's is refused: the journal says how to finish the rollback."""
    sim.create("a100-40gb:1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    simulator = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "simulator"))
    smi.write_text(RESETS_ONCE % {"flag": tmp_path / "once", "simulator": simulator, "python": sys.executable})
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bin_dir, os.environ["PATH"]))
    sim.fault("nvmlDeviceCreateGpuInstanceWithPlacement", call=1, code=999)
    rc, out, err = run(script, capsys, "--state", desired(layout={"7g.40gb": 1}))
    assert rc == 1
    assert "GPU 0: finish the rollback with: nvidia-smi -r -i %s" % sim.gpu(0)["bus_id"] in err
    assert "GPU 0: changed;" in err
