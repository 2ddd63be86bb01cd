# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The gpu_report filters on hand-made results: selectors, the slice map, drift rules, rendering, escaping."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

import pytest

from ansible_collections.gpuops.nvidia.plugins.filter import gpu_report as report
from ansible_collections.gpuops.nvidia.plugins.filter.gpu_report import FilterModule

H100_PROFILES = [
    {"name": "1g.10gb", "slices": 1, "placements": [{"start": s, "size": 1} for s in range(7)]},
    {"name": "2g.20gb", "slices": 2, "placements": [{"start": s, "size": 2} for s in (0, 2, 4)]},
    {"name": "3g.40gb", "slices": 3, "placements": [{"start": s, "size": 4} for s in (0, 4)]},
    {"name": "4g.40gb", "slices": 4, "placements": [{"start": 0, "size": 4}]},
    {"name": "7g.80gb", "slices": 7, "placements": [{"start": 0, "size": 8}]},
    {"name": "1g.20gb", "slices": 1, "placements": [{"start": s, "size": 2} for s in (0, 2, 4, 6)]},
]


def gi(start, size, profile, uuid, gi_id=1, cis=None):
    return {"id": gi_id, "profile": profile, "placement": {"start": start, "size": size},
            "compute_instances": cis if cis is not None else [
                {"id": 0, "profile": profile, "slices": int(profile[0]), "placement": {"start": 0, "size": int(profile[0])},
                 "uuid": uuid}]}


def gpu(index, mig=None, instances=None, persistence=True, compute_mode="default", processes=None):
    return {
        "index": index, "uuid": "GPU-%08x-0000-0000-0000-000000000000" % index, "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": "00000000:%02X:00.0" % (0x18 + 0x10 * index), "pci_device_id": "0x233010DE",
        "memory_total_mib": 81559, "persistence_mode": persistence, "compute_mode": compute_mode,
        "mig": {"capable": True, "current": mig or "disabled", "pending": mig or "disabled",
                "profiles": H100_PROFILES, "gpu_instances": instances or []},
        "processes": processes or [],
    }


MIXED = [gi(0, 4, "3g.40gb", "MIG-aaaaaaaa-1111-2222-3333-444444444444", 1),
         gi(4, 2, "2g.20gb", "MIG-bbbbbbbb-1111-2222-3333-444444444444", 5),
         gi(6, 1, "1g.10gb", "MIG-cccccccc-1111-2222-3333-444444444444", 13)]


def info(*gpus):
    return {"changed": False, "gpus": list(gpus), "driver": {"version": "580.95.05", "cuda_driver_version": "13.0"},
            "unavailable_reason": None}


def test_the_filters_are_registered():
    assert sorted(FilterModule().filters()) == [
        "gpu_report_html", "gpu_report_markdown", "gpu_report_node", "gpu_report_table"]


@pytest.mark.parametrize("value, expected", [
    ("MIG-3c7a0a6e-2c4b-5e55-9f3c-1b1d3a6a1f00", "MIG-3c7a0a6e"),
    ("GPU-7a66f036-ab04-e93b-c0c8-a668c2ffe980", "GPU-7a66f036"),
    ("shared", "shared"), (None, ""),
])
def test_short_uuid(value, expected):
    assert report.short_uuid(value) == expected


def test_labels():
    assert report.layout_label({"1g.10gb": 2, "3g.40gb": 1, "2g.20gb": 1}) == "3g.40gb + 2g.20gb + 2x 1g.10gb"
    assert report.layout_label({"1c.3g.40gb": 3}) == "3x 1c.3g.40gb"
    assert report.layout_label({}) == "no MIG devices"
    assert report.limits_label({"active_thread_percentage": 50.0, "device_pinned_mem_limit": {"0": "20G", "1": "20G"},
                                "client_priority": 1}) == "50% SM, 20G/device, priority 1"
    assert report.limits_label({"active_thread_percentage": 100.0, "device_pinned_mem_limit": {}}) == "none"
    assert report.limits_label({"device_pinned_mem_limit": {"0": "20G"}}) == "20G pinned"
    assert report.limits_label({"device_pinned_mem_limit": {"0": "20G", "1": "10G"}}) == "dev 0 20G, dev 1 10G"
    assert report.compute_mode_label("exclusive_process") == "E. Process"
    assert report.compute_mode_label(None) == "n/a"


def test_selector_takes_every_form_of_the_collections_selector():
    gpus = [gpu(0, "enabled", MIXED), gpu(1), gpu(2)]
    assert report._selected(gpus, "all", None) == ([0, 1, 2], [])
    assert report._selected(gpus, ["all"], None) == ([0, 1, 2], [])
    # index (int or text), GPU UUID, MIG UUID (selects its GPU), bus id in NVML's and lspci's forms
    assert report._selected(gpus, [0, "1"], None) == ([0, 1], [])
    assert report._selected(gpus, ["GPU-00000002-0000-0000-0000-000000000000"], None) == ([2], [])
    assert report._selected(gpus, ["MIG-bbbbbbbb-1111-2222-3333-444444444444"], None) == ([0], [])
    assert report._selected(gpus, ["0000:28:00.0", "38:00.0"], None) == ([1, 2], [])
    assert report._selected(gpus, [7, "GPU-nope"], None) == ([], ["7", "GPU-nope"])
    assert report._selected(gpus, "all", ["0x20B010DE"]) == ([], [])
    assert report._selected(gpus, "all", "0x233010de") == ([0, 1, 2], [])


def test_slice_map_explains_the_memory_slice_no_profile_can_use():
    segments = report.slice_segments(gpu(0, "enabled", MIXED))
    assert segments["memory_slices"] == 8
    kinds = [(s["kind"], s["slices"], s["label"]) for s in segments["segments"]]
    assert kinds == [("gi", "0-3", "3g.40gb"), ("gi", "4-5", "2g.20gb"), ("gi", "6", "1g.10gb"),
                     ("unusable", "7", "unusable")]
    why = segments["segments"][-1]["why"]
    assert why == ("no MIG profile fits on memory slice 7 (the H100 80GB HBM3 has 8 memory slices but 7 compute "
                   "slices)")


def test_slice_map_names_what_still_fits_in_free_slices():
    segments = report.slice_segments(gpu(0, "enabled", [MIXED[0]]))["segments"]
    assert [(s["kind"], s["slices"]) for s in segments] == [("gi", "0-3"), ("free", "4-7")]
    assert segments[1]["fits"] == ["1g.10gb", "2g.20gb", "3g.40gb", "1g.20gb"]
    assert segments[1]["why"] == "free: room for 1g.10gb, 2g.20gb, 3g.40gb, 1g.20gb"


def test_slice_map_shows_compute_instances_sharing_a_gpu_instance():
    cis = [{"id": i, "profile": "1c.3g.40gb", "slices": 1, "placement": {"start": i, "size": 1},
            "uuid": "MIG-%d" % i} for i in range(3)]
    segments = report.slice_segments(gpu(0, "enabled", [gi(0, 4, "3g.40gb", None, 1, cis)]))["segments"]
    assert segments[0]["label"] == "3g.40gb 3x1c"
    assert [d["uuid"] for d in segments[0]["devices"]] == ["MIG-0", "MIG-1", "MIG-2"]


def test_slice_map_without_profiles_calls_free_slices_free():
    facts = gpu(0, "enabled", [MIXED[0]])
    del facts["mig"]["profiles"]
    segments = report.slice_segments(facts)
    assert segments["memory_slices"] == 8
    assert [(s["kind"], s["why"]) for s in segments["segments"][1:]] == [("free", "free")]


def test_no_gpu_facts_make_a_no_data_node():
    for gathered in ({}, {"gpu_info": {"failed": True, "msg": "libnvidia-ml.so.1 not found"}},
                     {"gpu_info": {"gpus": [], "driver": {}, "unavailable_reason": "no driver"}},
                     {"gpu_info": {"skipped": True}}):
        node = report.node_model(gathered, {}, host="n1")
        assert node["status"] == "unavailable" and node["gpus"] == []
        assert report.text_table(node)[0].startswith("n1: no GPU facts: ")


def test_desired_state_lines():
    lines = report.asked({
        "driver": {"enabled": True, "branch": "580", "source": "cuda"},
        "persistence": {"enabled": True, "mode": True, "devices": ["all"]},
        "mig": {"enabled": True, "layout": {"3g.40gb": 2}, "devices": [0, 1, 2, 5]},
        "mps": {"enabled": True, "per_gpu": True, "instances": [{"name": "a", "devices": [6]}],
                "defaults": {"default_active_thread_percentage": 25, "default_device_pinned_mem_limit": {"0": "18G"}}},
        "nvshare": {"enabled": True, "state": "present", "devices": "all", "tq": 60,
                    "clients": [{"service": "jupyterhub"}]},
    })
    assert lines == [
        "driver: install branch 580 from NVIDIA's CUDA repository",
        "persistence mode on for all GPUs (nvidia-persistenced)",
        "MIG: GPUs 0-2, 5 -> 2x 3g.40gb",
        "MPS: one daemon per whole GPU (25% SM, 18G pinned)",
        "MPS: daemon a on GPU 6, 25% SM, 18G pinned",
        "nvshare: a scheduler on all GPUs, TQ 60s, clients jupyterhub",
    ]
    assert report.asked({}) == ["driver: not managed (treated as installed)", "persistence mode: not managed",
                                "MIG: not managed", "MPS: not managed", "nvshare: not managed"]
    assert report.asked({"mig": {"enabled": True, "mode": "disabled", "layout": None}})[2] == \
        "MIG: disabled on all GPUs"


def test_persistence_drift_only_on_the_selected_gpus():
    desired = {"persistence": {"enabled": True, "mode": True, "devices": [0]}}
    node = report.node_model({"gpu_info": info(gpu(0, persistence=False), gpu(1, persistence=False))}, desired)
    assert node["status"] == "drift"
    assert node["drift"] == [{"where": "GPU 0", "what": "persistence mode off, the inventory wants on"}]
    assert node["gpus"][0]["differs"] == ["persistence"] and node["gpus"][1]["differs"] == []
    table = report.text_table(node)
    row = next(line for line in table if line.startswith("0 "))
    assert re.search(r"\boff\*", row) and row.endswith("DRIFT")
    assert "(* differs from the inventory)" in table
    # persistenced switched off: nothing is expected
    assert report.node_model({"gpu_info": info(gpu(0, persistence=False))}, {})["status"] == "ok"


def _mig_check(before, after, changed=True, **extra):
    entry = {"index": 1, "changed": changed, "before": before, "after": after}
    entry.update(extra)
    return {"changed": False, "gpus": [entry], "plan": []}


def test_mig_drift_comes_from_the_modules_check_mode():
    desired = {"mig": {"enabled": True, "layout": {"3g.40gb": 2}, "devices": [1]}}
    found = {"gpu_info": info(gpu(0), gpu(1, "enabled", MIXED)),
             "mig_check": _mig_check({"mig_mode": "enabled", "devices": {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}},
                                     {"mig_mode": "enabled", "devices": {"3g.40gb": 2}})}
    node = report.node_model(found, desired)
    assert node["drift"] == [{"where": "GPU 1", "what": "MIG devices 3g.40gb + 2g.20gb + 1g.10gb, the inventory "
                                                        "wants 2x 3g.40gb"}]
    assert node["gpus"][1]["desired"] == {"mig": "enabled", "layout": {"3g.40gb": 2}}
    found["mig_check"] = _mig_check({"mig_mode": "disabled", "devices": {}},
                                    {"mig_mode": "enabled", "devices": {"3g.40gb": 2}})
    assert report.node_model(found, desired)["drift"][0]["what"] == \
        "MIG disabled, the inventory wants MIG enabled with 2x 3g.40gb"
    found["mig_check"] = _mig_check({"mig_mode": "disabled", "mig_mode_pending": "enabled", "devices": {}},
                                    {"mig_mode": "enabled", "devices": {}}, changed=False, reset_required=True)
    assert report.node_model(found, desired)["drift"] == [{"where": "GPU 1",
                                                           "what": "MIG mode change waits for a GPU reset"}]
    found["mig_check"] = _mig_check({"mig_mode": "enabled", "devices": {"3g.40gb": 2}},
                                    {"mig_mode": "enabled", "devices": {"3g.40gb": 2}}, changed=False)
    assert report.node_model(found, desired)["status"] == "ok"


def test_a_refused_check_is_drift_even_when_the_task_ignored_the_failure():
    # failed_when: false sets failed to false but keeps the collection's failure payload.
    refused = {"failed": False, "failed_when_result": False, "msg": "unknown profile 9g.90gb",
               "error_kind": "unknown_profile"}
    found = {"gpu_info": info(gpu(0)), "mig_check": refused}
    node = report.node_model(found, {"mig": {"enabled": True}})
    assert node["drift"] == [{"where": "MIG", "what": "not compared, nvidia_mig's check with the inventory's "
                                                      "settings failed: unknown profile 9g.90gb"}]
    # MIG switched off: the check is not looked at
    assert report.node_model(found, {})["status"] == "ok"
    found["mps_plan"] = {"failed": False, "error_kind": "invalid_argument", "msg": "mps instance a: bad user"}
    assert report.node_model(found, {"mps": {"enabled": True}})["drift"] == [
        {"where": "MPS", "what": "not compared, nvidia_mps_instances refused the inventory's settings: "
                                 "mps instance a: bad user"}]


def _check(name, pid=400, devices=None, servers=None, defaults=None, actions=None, **config):
    config.setdefault("pipe_directory", "/run/nvidia-mps/%s" % name)
    return {"item": {"name": name, "config": config}, "changed": False, "pid": pid, "running": True,
            "devices": devices or [], "servers": servers or [], "defaults": defaults or {},
            "actions": actions or []}


def test_mps_daemons_their_devices_limits_clients_and_drift():
    client = {"pid": 4242, "name": "python3", "used_gpu_memory": 2 ** 30}
    gpus = [gpu(0, "enabled", MIXED), gpu(1, compute_mode="exclusive_process", processes=[client]),
            gpu(2, compute_mode="default")]
    mig_uuid = MIXED[1]["compute_instances"][0]["uuid"]
    plan = {"instances": [
        {"name": "shared", "running": True, "restart_needed": False,
         "config": {"devices": [1, 2], "default_active_thread_percentage": 50}},
        {"name": mig_uuid, "running": False, "restart_needed": False, "config": {"devices": [mig_uuid]}}]}
    checks = {"results": [
        _check("shared", devices=[{"uuid": gpus[1]["uuid"], "type": "gpu", "index": 1},
                                  {"uuid": gpus[2]["uuid"], "type": "gpu", "index": 2}],
               servers=[{"pid": 500, "status": "ACTIVE", "clients": [4242]}],
               defaults={"active_thread_percentage": 50.0, "device_pinned_mem_limit": {}},
               actions=["set the compute mode of GPU 2 (NVIDIA H100 80GB HBM3, 00000000:38:00.0) from default to "
                        "exclusive_process"]),
        dict(_check(mig_uuid, pid=None, devices=[{"uuid": mig_uuid, "type": "mig", "parent_index": 0}]),
             actions=["start the MPS control daemon on /run/nvidia-mps/%s" % mig_uuid]),
        _check("leftover", devices=[{"uuid": gpus[2]["uuid"], "type": "gpu", "index": 2}])]}
    services = {"gpuops-mps@%s.service" % mig_uuid: {"state": "failed"},
                "gpuops-mps@leftover.service": {"state": "running"}, "ssh.service": {"state": "running"}}
    found = {"gpu_info": info(*gpus), "mps_plan": plan, "mps_checks": checks, "services": services,
             "mps_found": ["shared", mig_uuid, "leftover"]}
    desired = {"mps": {"enabled": True, "per_mig_device": True, "instances": [{"name": "shared", "devices": [1, 2]}]}}
    node = report.node_model(found, desired)
    by_name = dict((d["name"], d) for d in node["mps"])
    assert [d["name"] for d in node["mps"]] == [mig_uuid, "shared", "leftover"]  # by GPU, then slice
    shared = by_name["shared"]
    assert (shared["origin"], shared["serves"], shared["limits_label"]) == ("named", "GPUs 1-2", "50% SM")
    assert shared["clients"] == [{"pid": 4242, "name": "python3", "server": 500}]
    assert shared["drift"] == ["set the compute mode of GPU 2 (NVIDIA H100 80GB HBM3, 00000000:38:00.0) from default to "
                               "exclusive_process"]
    per_mig = by_name[mig_uuid]
    assert (per_mig["origin"], per_mig["serves"], per_mig["running"]) == \
        ("per MIG device", "GPU 0 2g.20gb (slices 4-5)", False)
    assert per_mig["drift"] == ["not running (unit failed)"]
    assert by_name["leftover"]["drift"] == ["runs but the inventory has no such MPS daemon"]
    assert not by_name["leftover"]["in_inventory"]
    rows = node["gpus"]
    assert rows[0]["mig_devices"][1]["daemon"] == mig_uuid and rows[0]["mig_devices"][0]["daemon"] is None
    assert rows[1]["daemons"] == ["shared"] and rows[2]["daemons"] == ["shared", "leftover"]
    assert rows[2]["differs"] == ["compute_mode", "mps"]
    assert rows[1]["differs"] == [] and rows[1]["drift"] == []  # the compute mode action names GPU 2 only
    wheres = [d["where"] for d in node["drift"]]
    assert wheres == ["MPS MIG-bbbbbbbb (GPU 0 2g.20gb (slices 4-5))", "MPS shared (GPUs 1-2)",
                      "MPS leftover (GPU 2)"]
    table = report.text_table(node)
    assert any(re.match(r"^1 .*E\. Process .*shared up +50% SM +1 \(python3 4242\)", line) for line in table)
    assert any(re.search(r"2g\.20gb MIG-bbbbbbbb +4-5 +per-device DOWN", line) for line in table)


def test_mps_off_in_the_inventory_but_daemons_left_on_the_node():
    found = {"gpu_info": info(gpu(0)), "mps_files": {"files": [{"path": "/etc/gpuops/mps/daemon/a.json"}]},
             "services": {"gpuops-mps@a.service": {"state": "running"}},
             "mps_configs": {"a": {"pipe_directory": "/run/nvidia-mps/a", "devices": [0]}}}
    node = report.node_model(found, {"mps": {"enabled": False}})
    assert [(d["name"], d["serves"], d["drift"]) for d in node["mps"]] == \
        [("a", "GPU 0", ["runs but the inventory has MPS off"])]
    assert node["gpus"][0]["daemons"] == ["a"]


def test_a_daemon_check_that_failed_is_reported():
    mig = "MIG-dddddddd-1111-2222-3333-444444444444"
    check = {"item": {"name": mig, "config": {"devices": [mig]}}, "failed": False, "failed_when_result": False,
             "error_kind": "not_found", "msg": "cannot find MIG device %s: NVML error 6 (Not Found)" % mig}
    found = {"gpu_info": info(gpu(0)), "mps_checks": {"results": [check]}, "mps_found": [mig],
             "services": {"gpuops-mps@%s.service" % mig: {"state": "running"}}}
    daemon = report.node_model(found, {"mps": {"enabled": True}})["mps"][0]
    assert daemon["serves"] == "MIG device MIG-dddddddd (gone)"
    assert daemon["drift"] == ["runs but the inventory has no such MPS daemon",
                               "cannot be checked: cannot find MIG device %s: NVML error 6 (Not Found)" % mig]


def test_nvshare_schedulers_against_the_inventory():
    gpus = [gpu(0), gpu(1), gpu(2)]
    unit = "nvshare-scheduler@%s.service"
    services = {unit % gpus[0]["uuid"]: {"state": "running"}, unit % gpus[1]["uuid"]: {"state": "failed"},
                unit % gpus[2]["uuid"]: {"state": "running"}}
    desired = {"nvshare": {"enabled": True, "state": "present", "devices": [0, 1], "tq": 60}}
    node = report.node_model({"gpu_info": info(*gpus), "services": services,
                              "nvshare_config": {"tq": 30, "clients": [{"service": "jupyterhub"}]}}, desired)
    assert [(g["nvshare"]["state"], g["nvshare"]["tq"]) for g in node["gpus"]] == \
        [("running", 30), ("failed", 30), ("running", 30)]
    assert node["drift"] == [
        {"where": "nvshare", "what": "TQ on the node 30s, the inventory wants 60s"},
        {"where": "GPU 1", "what": "nvshare scheduler failed"},
        {"where": "GPU 2", "what": "an nvshare scheduler runs, the inventory has none for this GPU"}]
    assert node["nvshare"] == {"config_tq": 30, "clients": ["jupyterhub"]}
    assert any(line.startswith("0 ") and "up TQ 30s" in line for line in report.text_table(node))
    # nvshare not managed and nothing on the node: no nvshare column content at all
    assert report.node_model({"gpu_info": info(gpu(0))}, {})["gpus"][0]["nvshare"] is None


def test_driver_branch_and_version():
    found = {"gpu_info": info(gpu(0))}
    assert report.node_model(found, {"driver": {"enabled": True, "branch": "580"}})["status"] == "ok"
    assert report.node_model(found, {"driver": {"enabled": True, "branch": "570"}})["drift"] == \
        [{"where": "driver", "what": "driver 580.95.05, the inventory wants branch 570"}]
    assert report.node_model(found, {"driver": {"enabled": True, "version": "580.95.06"}})["drift"] == \
        [{"where": "driver", "what": "driver 580.95.05, the inventory wants 580.95.06"}]
    assert report.node_model(found, {"driver": {"enabled": False, "branch": "570"}})["status"] == "ok"


def test_text_table_as_one_string_for_yaml_output():
    node = report.node_model({"gpu_info": info(gpu(0))}, {}, host="n1")
    assert report.text_table(node, text=True) == "\n".join(report.text_table(node))
    assert report.text_table(node, text="False") == report.text_table(node)


def test_html_escapes_everything_and_fetches_nothing():
    node = report.node_model({"gpu_info": info(gpu(0))}, {}, host='<script>alert("x")</script>',
                             groups=["a&b"], note="<b>note</b>")
    page = report.html_report([node], title="Fleet <1>", generated="2026-11-23 06:00 UTC")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "a&amp;b" in page and "&lt;b&gt;note&lt;/b&gt;" in page and "<title>Fleet &lt;1&gt;</title>" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # self-contained
    assert "@import" not in page and "url(http" not in page


def test_fleet_adds_no_data_cards_for_missing_hosts():
    ok = report.node_model({"gpu_info": info(gpu(0))}, {}, host="b")
    page = report.html_report([ok], missing=["a"])
    assert page.index('data-host="a"') < page.index('data-host="b"')
    assert 'data-status="unavailable"' in page and "unreachable, or a task failed" in page
    markdown = report.markdown_report([ok], missing=["a"])
    assert "## a: no data" in markdown and "## b: in sync" in markdown
    assert "2 nodes, 1 GPU, 0 MPS daemons: 1 in sync, 0 drift, 1 without data." in markdown


def test_markdown_escapes_table_cells():
    node = report.node_model({"gpu_info": info(gpu(0, "enabled", MIXED))}, {}, host="n|1")
    markdown = report.markdown_report([node])
    assert "## n|1: in sync" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 0 |"))
    assert "`[3g.40gb 0-3 \\| 2g.20gb 4-5 \\| 1g.10gb 6 \\| unusable 7]`" in row
    assert row.count(" | ") == 8  # nine cells, the escaped pipes inside the slice map are not separators
