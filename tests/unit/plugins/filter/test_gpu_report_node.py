# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The report of a simulated Slurm node, read with the modules the playbook runs: converged, then drifted."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report_node import STANDINS, SlurmNode, slurm_desired  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.gpuops.nvidia.plugins.filter import gpu_report as report  # noqa: E402
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mig  # noqa: E402

pytestmark = pytest.mark.usefixtures("mig_lock")


@pytest.fixture
def node(sim, run, tmp_path, monkeypatch):
    converged = SlurmNode(sim, run, tmp_path, monkeypatch)
    yield converged
    converged.stop_all()


def model(node, **kwargs):
    return report.node_model(node.gather(), slurm_desired(), host="gpu-node-1", groups=["slurm_gpu_nodes"],
                             simulated=True, **kwargs)


def mig_uuids(sim, index):
    return [ci["uuid"] for gi in sorted(sim.gpu(index)["gpu_instances"], key=lambda g: g["start"])
            for ci in gi["compute_instances"]]


def test_a_converged_slurm_node_is_in_sync(node, sim):
    node.converge()
    converged = model(node)
    assert converged["status"] == "ok", converged["drift"]
    assert converged["summary"] == ("8 x NVIDIA H100 80GB HBM3, driver 580.159.04 (SIMULATED GPUs and driver): in sync "
                                    "with the inventory")
    gpu0 = converged["gpus"][0]
    assert [(d["profile"], d["slices"]) for d in gpu0["mig_devices"]] == [
        ("3g.40gb", "0-3"), ("2g.20gb", "4-5"), ("1g.10gb", "6")]
    assert [d["daemon"] for d in gpu0["mig_devices"]] == ["gpu0-slice0-3g.40gb", "gpu0-slice4-2g.20gb",
                                                          "gpu0-slice6-1g.10gb"]
    assert [s["kind"] for s in gpu0["segments"]] == ["gi", "gi", "gi", "unusable"]
    assert [(g["compute_mode"], g["daemons"]) for g in converged["gpus"][2:]] == \
        [("default", [])] * 4 + [("exclusive_process", ["shared"])] * 2
    daemons = [(d["name"], d["serves"], d["running"], d["limits_label"]) for d in converged["mps"]]
    devices = [(i, profile, slices) for i in (0, 1)
               for profile, slices in (("3g.40gb", "0-3"), ("2g.20gb", "4-5"), ("1g.10gb", "6"))]
    labels = ["GPU %d %s (slices %s)" % device for device in devices]
    names = ["gpu%d-slice%s-%s" % (i, slices.split("-")[0], profile) for i, profile, slices in devices]
    assert daemons == [(name, label, True, "none") for name, label in zip(names, labels)] + \
        [("shared", "GPUs 6-7", True, "50% SM, 20G/device")]

    table = report.text_table(converged)
    header = next(i for i, line in enumerate(table) if line.startswith("GPU "))
    assert table[header].split() == ["GPU", "MODEL", "PERSIST", "COMPUTE", "MIG", "MIG", "DEVICE", "SLICES", "MPS",
                                     "DAEMON", "MPS", "LIMITS", "CLIENTS", "NVSHARE", "STATE"]
    rows = table[header + 1:header + 1 + 14]  # GPUs 0-1: a row per MIG device and one for slice 7
    assert re.match(r"^0 +H100 80GB HBM3 +on +Default +on +3g\.40gb MIG-\w{8} +0-3 +per-device up +none +0 +- +ok$",
                    rows[0])
    assert re.match(r"^ +\(unusable\) +7$", rows[3])
    assert re.match(r"^6 +H100 80GB HBM3 +on +E\. Process +off +- +shared up +50% SM, 20G/device +0 +- +ok$", rows[12])
    assert "  driver: not managed (treated as installed)" in table
    assert "  MPS: daemon shared on GPUs 6-7, 50% SM, 20G/device" in table
    assert not any("DRIFT" in line for line in table)


def test_drift_on_the_slurm_node(node, sim, run):
    node.converge()
    gone = mig_uuids(sim, 1)
    # persistence off on GPU 3, the shared daemon killed, GPU 1 re-split by hand, a client on GPU 0's 3g device
    with sim.edit() as data:
        data["gpus"][3]["persistence_mode"] = 0
    shared_pid = int(open(os.path.join(node.pipe_root, "shared", "nvidia-cuda-mps-control.pid")).read())
    os.kill(shared_pid, signal.SIGKILL)
    assert not run(nvidia_mig, {"devices": [1], "layout": {"3g.40gb": 1, "1g.10gb": 2}}).get("failed")
    client = subprocess.Popen(["sleep", "60"])  # pylint: disable=consider-using-with
    try:
        pipe = os.path.join(node.pipe_root, "gpu0-slice0-3g.40gb")
        subprocess.run([os.path.join(STANDINS, "nvidia-cuda-mps-control")], input="gpuops_standin_client_add %d\n"
                       % client.pid, text=True, check=True, capture_output=True,
                       env=dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe))
        sim.add_process(gpu=0, pid=client.pid, name="train.py", gi=1, ci=0)
        drifted = model(node)
    finally:
        client.kill()
        client.wait()
    assert drifted["status"] == "drift"
    assert gone[1] not in mig_uuids(sim, 1)
    # Daemons are named by placement: the 2g.20gb daemon at slice 4 is no longer wanted; a 1g.10gb one is.
    assert drifted["drift"] == [
        {"where": "GPU 1", "what": "MIG devices 3g.40gb + 2x 1g.10gb, the inventory wants 3g.40gb + 2g.20gb + 1g.10gb"},
        {"where": "GPU 3", "what": "persistence mode off, the inventory wants on"},
        {"where": "MPS gpu1-slice4-1g.10gb (GPU 1 1g.10gb (slices 4))", "what": "not running"},
        {"where": "MPS gpu1-slice4-2g.20gb (GPU 1 1g.10gb (slices 4))",
         "what": "runs but the inventory has no such MPS daemon"},
        {"where": "MPS shared (GPUs 6-7)", "what": "not running (unit stopped)"},
    ]
    first = next(d for d in drifted["mps"] if d["name"] == "gpu0-slice0-3g.40gb")
    assert first["clients"] == [{"pid": client.pid, "name": "train.py", "server": first["servers"][0]["pid"]}]
    assert [g["index"] for g in drifted["gpus"] if g["drift"]] == [1, 3, 6, 7]
    assert drifted["gpus"][1]["segments"][2]["why"] == "free: room for 1g.10gb, 1g.10gb+me"
    table = report.text_table(drifted)
    assert any(re.match(r"^3 +H100 80GB HBM3 +off\* .* DRIFT$", line) for line in table)
    assert any(re.search(r"per-device up +none +1 \(train\.py %d\)" % client.pid, line) for line in table)
    assert "DRIFT from the inventory:" in table
