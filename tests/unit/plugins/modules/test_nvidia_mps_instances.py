# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nvidia_mps_instances (the mps role's preflight) on the NVML simulator: expansion, validation, resolution."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

import pytest

from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mps_instances

ROLE_DEFAULTS = {"user": "root", "group": "root", "multiuser": False, "compute_mode": "exclusive_process",
                 "default_active_thread_percentage": None, "default_device_pinned_mem_limit": None,
                 "default_client_priority": None}


def plan(run, tmp_path, **params):
    params.setdefault("defaults", ROLE_DEFAULTS)
    params.setdefault("pipe_root", str(tmp_path / "run"))
    params.setdefault("log_root", str(tmp_path / "log"))
    params.setdefault("binary", "/nonexistent/nvidia-cuda-mps-control")
    return run(nvidia_mps_instances, params, check_mode=True)


def test_an_instance_selected_by_pci_bus_id_resolves_on_the_node(sim, run, tmp_path):
    """The role used to resolve devices in Jinja and read `bus_id` where the facts say `pci_bus_id`."""
    sim.create("h100-80gb:2")
    bus = sim.gpu(1)["bus_id"]
    for form in (bus, bus.replace("00000000:", "0000:").lower(), bus[-7:]):
        result = plan(run, tmp_path, instances=[{"name": "bybus", "devices": [form]}])
        assert not result.failed, result
        (instance,) = result["instances"]
        assert instance["config"]["devices"] == [form]  # written as given; the helper resolves at every start
        assert instance["client_environment"]["CUDA_VISIBLE_DEVICES"] == sim.gpu(1)["uuid"]
        assert instance["config"]["compute_mode"] == "exclusive_process" and not result["changed"]


def test_generated_instances_per_gpu_and_per_mig_device(sim, run, tmp_path):
    sim.create("h100-80gb:3")
    mig = sim.make_mig_device(1)
    (gi_start,) = [gi["start"] for gi in sim.gpu(1)["gpu_instances"]]
    result = plan(run, tmp_path, per_gpu=True, per_mig_device=True)
    names = [i["name"] for i in result["instances"]]
    assert names == [sim.gpu(0)["uuid"], "gpu1-slice%d-1g.10gb" % gi_start, sim.gpu(2)["uuid"]]
    by_name = dict((i["name"], i) for i in result["instances"])
    per_mig = by_name[names[1]]
    assert per_mig["config"]["compute_mode"] == "keep"
    assert per_mig["config"]["devices"] == ["mig:%s:%d:0" % (sim.gpu(1)["uuid"], gi_start)]
    assert per_mig["devices"][0]["uuid"] == mig and per_mig["devices"][0]["type"] == "mig"
    assert per_mig["client_environment"]["CUDA_VISIBLE_DEVICES"] == mig
    assert by_name[sim.gpu(0)["uuid"]]["config"]["compute_mode"] == "exclusive_process"


def test_per_mig_device_daemons_keep_their_name_and_desired_state_when_the_mig_devices_are_recreated(
        sim, run, tmp_path):
    """A reboot drops the MIG instances and gpuops-mig-apply recreates them with new MIG UUIDs: a daemon named and
    configured by the old UUID would no longer start. The name and desired state must not change; only the
    resolved device (and the client environment) follow the new UUID."""
    sim.create("h100-80gb:1")
    before_uuid = sim.make_mig_device(0)
    before = plan(run, tmp_path, per_mig_device=True)["instances"]
    sim.reboot()  # drops the instances (and, on Hopper, the MIG mode); the layout is applied again
    after_uuid = sim.make_mig_device(0)
    after = plan(run, tmp_path, per_mig_device=True)["instances"]
    assert after_uuid != before_uuid
    assert [i["name"] for i in after] == [i["name"] for i in before]
    assert after[0]["config"] == before[0]["config"]
    assert after[0]["client_environment"]["CUDA_VISIBLE_DEVICES"] == after_uuid


def test_a_mig_placement_that_does_not_exist_is_refused_with_the_devices_there(sim, run, tmp_path):
    sim.create("h100-80gb:1")
    mig = sim.make_mig_device(0)
    result = plan(run, tmp_path, instances=[{"name": "m", "devices": ["mig:0:6:0"]}])
    assert result.failed and result["error_kind"] == "invalid_selection", result
    assert "no MIG device whose GPU instance starts at memory slice 6" in result["msg"]
    assert "mig:%s:" % sim.gpu(0)["uuid"] in result["msg"] and mig in result["msg"]

    sim.create("h100-80gb:1")
    whole = plan(run, tmp_path, instances=[{"name": "w", "devices": ["mig:0:0:0"]}])
    assert whole.failed and "GPU 0 (NVIDIA H100 80GB HBM3" in whole["msg"] and "is not in MIG mode" in whole["msg"]


def test_named_mig_instance_keeps_the_compute_mode_unless_it_says_otherwise(sim, run, tmp_path):
    sim.create("h100-80gb:1")
    mig = sim.make_mig_device(0)
    result = plan(run, tmp_path, instances=[{"name": "m", "devices": [mig]}])
    assert result["instances"][0]["config"]["compute_mode"] == "keep"
    refused = plan(run, tmp_path, instances=[{"name": "m", "devices": [mig], "compute_mode": "exclusive_process"}])
    assert refused.failed and "cannot be applied to MIG devices" in refused["msg"]


@pytest.mark.parametrize("name", [".", "..", ".hidden", "-x", "a/b", "a b", ""])
def test_names_that_cannot_be_a_unit_or_directory_are_refused(sim, run, tmp_path, name):
    sim.create("h100-80gb:1")
    result = plan(run, tmp_path, instances=[{"name": name, "devices": [0]}])
    assert result.failed and result["error_kind"] == "invalid_argument", result
    assert "name" in result["msg"] and "nothing was changed" in result["msg"]


def test_every_problem_is_reported_at_once_with_what_is_valid(sim, run, tmp_path):
    sim.create("h100-80gb:2")
    result = plan(run, tmp_path, instances=[
        {"name": "a", "devices": [0], "default_device_pinned_mem_limit": {"0": "lots"}},
        {"name": "b", "devices": [9]},
        {"name": "c", "devices": [1], "user": "no-such-user-gpuops"},
        {"name": "d", "devices": [1], "pinned_mem_limit": {"0": "4G"}},
    ])
    assert result.failed
    message = result["msg"]
    assert "mps instance a: bad default_device_pinned_mem_limit 'lots' for device 0" in message
    assert "mps instance b: no GPU with index 9: GPUs on this host: 0 = " in message
    assert "mps instance c: user no-such-user-gpuops does not exist" in message
    assert "mps instance d: unknown option(s) pinned_mem_limit; valid options:" in message
    assert "default_device_pinned_mem_limit" in message.split("mps instance d:")[1]


def test_two_instances_on_one_device_or_one_pipe_directory_are_refused(sim, run, tmp_path):
    sim.create("h100-80gb:2")
    same_device = plan(run, tmp_path, instances=[
        {"name": "a", "devices": [0]}, {"name": "b", "devices": [sim.gpu(0)["uuid"]]}])
    assert same_device.failed and "mps instance b and mps instance a serve the same device" in same_device["msg"]
    every_gpu = plan(run, tmp_path, instances=[{"name": "a", "devices": [0]}, {"name": "all"}])
    assert every_gpu.failed and "serves every GPU" in every_gpu["msg"]
    same_name = plan(run, tmp_path, instances=[{"name": "a", "devices": [0]}, {"name": "a", "devices": [1]}])
    assert same_name.failed and "same pipe directory" in same_name["msg"]


def test_unknown_default_is_refused(sim, run, tmp_path):
    sim.create("h100-80gb:1")
    result = plan(run, tmp_path, defaults=dict(ROLE_DEFAULTS, devices=[0]))
    assert result.failed and "defaults: unknown option(s) devices" in result["msg"]


def write(run, tmp_path, check_mode=False, **params):
    params.setdefault("defaults", ROLE_DEFAULTS)
    params.setdefault("pipe_root", str(tmp_path / "run"))
    params.setdefault("log_root", str(tmp_path / "log"))
    params.setdefault("binary", "/nonexistent/nvidia-cuda-mps-control")
    params.update(config_dir=str(tmp_path / "etc"), unit_dir=str(tmp_path / "units"))
    return run(nvidia_mps_instances, params, check_mode=check_mode, diff=True)


def test_config_dir_writes_every_instances_files_once_and_says_what_changed(sim, run, tmp_path):
    sim.create("h100-80gb:2")
    sim.make_mig_device(1)
    instances = [{"name": "shared", "devices": [0], "default_active_thread_percentage": 50}]
    preview = write(run, tmp_path, check_mode=True, instances=instances, per_mig_device=True)
    assert preview["changed"] and not (tmp_path / "etc").exists() and not (tmp_path / "units").exists()
    assert len(preview["diff"]) == 6 and all(d["before"] == "" for d in preview["diff"])

    first = write(run, tmp_path, instances=instances, per_mig_device=True)
    assert first["changed"], first
    assert [sorted(i["written"]) for i in first["instances"]] == [["dropin", "environment", "settings"]] * 2
    names = [i["name"] for i in first["instances"]]
    assert names[0] == "shared" and names[1].startswith("gpu1-slice")
    settings = json.loads((tmp_path / "etc" / "daemon" / "shared.json").read_text())
    assert settings == first["instances"][0]["config"] and settings["default_active_thread_percentage"] == 50
    env = (tmp_path / "etc" / "shared.env").read_text()
    assert "CUDA_VISIBLE_DEVICES=%s\n" % sim.gpu(0)["uuid"] in env and env.startswith("# Managed by gpuops.nvidia")
    dropin = tmp_path / "units" / "gpuops-mps@shared.service.d" / "10-gpuops.conf"
    assert dropin.read_text().endswith("[Service]\nUser=root\nGroup=root\n")
    assert oct(os.stat(str(dropin)).st_mode & 0o777) == "0o644"

    again = write(run, tmp_path, instances=instances, per_mig_device=True)
    assert not again["changed"] and [i["written"] for i in again["instances"]] == [[], []]
    assert "diff" not in again or again["diff"] == []

    # A default changes the desired state (a reload applies it) and the client environment; a user the drop-in.
    changed = write(run, tmp_path, instances=[dict(instances[0], default_active_thread_percentage=25, user="nobody",
                                                   group="nogroup")], per_mig_device=True)
    assert [sorted(i["written"]) for i in changed["instances"]] == [["dropin", "environment", "settings"], []]
    assert dropin.read_text().endswith("[Service]\nUser=nobody\nGroup=nogroup\n")
    (diff_settings,) = [d for d in changed["diff"] if d["after_header"].endswith("shared.json")]
    assert '"default_active_thread_percentage": 50' in diff_settings["before"]
    assert '"default_active_thread_percentage": 25' in diff_settings["after"]


def test_refused_input_writes_nothing(sim, run, tmp_path):
    sim.create("h100-80gb:1")
    result = write(run, tmp_path, instances=[{"name": "a", "devices": [0]}, {"name": "b", "devices": [7]}])
    assert result.failed and "nothing was changed" in result["msg"]
    assert not (tmp_path / "etc").exists()


def test_inspect_reports_planned_daemons_and_those_only_on_the_node(sim, run, tmp_path):
    sim.create("h100-80gb:2")
    write(run, tmp_path, instances=[{"name": "a", "devices": [0]}, {"name": "old", "devices": [1]}])
    (tmp_path / "etc" / "daemon" / "broken.json").write_text("{not json")
    result = plan(run, tmp_path, instances=[{"name": "a", "devices": [0]}], inspect=str(tmp_path / "etc"))
    assert not result.failed and not result["changed"], result
    inspected = dict((i["item"]["name"], i) for i in result["inspected"])
    assert [i["item"]["name"] for i in result["inspected"]] == ["a", "broken", "old"]
    assert inspected["a"]["item"]["in_inventory"] and not inspected["old"]["item"]["in_inventory"]
    # the control binary does not exist here: each check fails with the engine's reason, the plan does not
    assert inspected["a"]["failed"] and inspected["a"]["error_kind"] == "binary_missing"
    assert inspected["old"]["item"]["config"]["devices"] == [1]
    assert inspected["broken"]["failed"] and "cannot read its desired state" in inspected["broken"]["msg"]


def test_unit_states_come_from_one_systemctl_show(monkeypatch):
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _mps_instances  # pylint: disable=import-outside-toplevel

    calls = []

    def fake_run(argv, env=None, data=None):
        calls.append(argv)
        return 0, ("Id=gpuops-mps@a.service\nActiveState=active\nSubState=running\nUnitFileState=enabled\n\n"
                   "Id=gpuops-mps@b.service\nActiveState=failed\nSubState=failed\nUnitFileState=disabled\n\n"
                   "Id=gpuops-mps@c.service\nActiveState=inactive\nSubState=dead\nUnitFileState=enabled\n"), ""

    monkeypatch.setattr(_mps_instances.os, "access", lambda path, mode: path == "/usr/bin/systemctl")
    monkeypatch.setattr(_mps_instances.os.path, "isdir", lambda path: path == "/run/systemd/system")
    states = _mps_instances.unit_states(fake_run, ["a", "b", "c"])
    assert calls == [["/usr/bin/systemctl", "show", "--property=Id,ActiveState,SubState,UnitFileState",
                      "gpuops-mps@a.service", "gpuops-mps@b.service", "gpuops-mps@c.service"]]
    assert states == {"a": {"state": "running", "active": True, "enabled": True},
                      "b": {"state": "failed", "active": False, "enabled": False},
                      "c": {"state": "stopped", "active": False, "enabled": True}}
    assert _mps_instances.unit_states(lambda *a, **k: (1, "", "no"), ["a"]) == {}
    monkeypatch.setattr(_mps_instances.os.path, "isdir", lambda path: False)
    assert _mps_instances.unit_states(fake_run, ["a"]) == {} and len(calls) == 1  # no systemd: not even asked
