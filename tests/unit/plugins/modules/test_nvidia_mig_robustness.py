"""nvidia_mig, issue #11: nothing half-done, nothing misreported.

One test (or a parametrized family) per failure class: a fault after the last write, Ampere rollback across a
reset, config files validated like the options, messages (one sentence for many GPUs, the GPU named, non-root check
mode), and the diff of kept, destroyed and created MIG devices. test_mig_fault_sweep.py sweeps the faults.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import pytest

from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mig
from mig_helpers import devices_of, nvidia_smi_once, run_mig_as_nobody, signature  # noqa: F401  pylint: disable=unused-import

pytestmark = pytest.mark.usefixtures("mig_lock")

BALANCED = {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}


def mig(run, check_mode=False, diff=False, **args):
    return run(nvidia_mig, args, check_mode=check_mode, diff=diff)


def warnings_of(result):
    """The warnings' texts (Ansible 2.19 returns them as WarningSummary objects)."""
    return [w if isinstance(w, str) else w["event"]["msg"] for w in result.get("warnings", [])]


def mig_uuids(sim, index=0):
    return set(ci["uuid"] for gi in sim.gpu(index)["gpu_instances"] for ci in gi["compute_instances"])


# -- a fault after the last write ----------------------------------------------------------------------------

@pytest.mark.parametrize("function", ["nvmlDeviceGetMaxMigDeviceCount", "nvmlDeviceGetUUID", "nvmlDeviceGetMigMode",
                                      "nvmlDeviceGetGpuInstances", "nvmlComputeInstanceGetInfo_v2"])
def test_fault_in_the_read_back_reports_what_was_applied(sim, run, function):
    """The layout is applied when reading it back fails: changed true, the planned state, and what is unconfirmed."""
    sim.create("h100-80gb")
    clean = mig(run, check_mode=True, layout=BALANCED)
    first = len(sim.library.calls)
    assert not mig(run, layout=BALANCED).failed
    calls = sim.library.calls[first:]
    sim.create("h100-80gb")
    sim.fault(function, call=calls.count(function), code=999)  # its last call: in the read-back
    result = mig(run, layout=BALANCED)
    assert result.failed and result["changed"] is True, result
    assert devices_of(sim, 0) == BALANCED
    gpu = result["gpus"][0]
    assert gpu["changed"] is True and gpu["confirmed"] is False
    assert gpu["after"] == clean["gpus"][0]["after"]  # the planned state
    assert len(gpu["executed"]) == len(clean["plan"])
    assert "was changed (all %d planned step(s) ran) but could not be read back" % len(clean["plan"]) in result["msg"]
    assert result["error_kind"] == "nvml" and result["nvml_code"] == 999
    assert mig(run, layout=BALANCED)["changed"] is False


def test_a_complete_rollback_is_no_change(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"3g.40gb": 2})
    before, uuids = signature(sim), mig_uuids(sim)
    sim.fault("nvmlDeviceCreateGpuInstanceWithPlacement", call=1, code=999)  # after both GIs were destroyed
    result = mig(run, layout={"7g.80gb": 1})
    assert result.failed and result["changed"] is False and result["gpus"][0]["changed"] is False
    assert result["gpus"][0]["rolled_back"] is True
    assert signature(sim) == before and not uuids & mig_uuids(sim)
    assert "GPU 0 was rolled back and is as it was" in result["msg"]
    assert "its 2 recreated MIG device(s) have new UUIDs" in result["msg"]


def test_new_uuids_only_when_devices_were_recreated(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"3g.40gb": 1})
    uuids = mig_uuids(sim)
    sim.fault("nvmlGpuInstanceCreateComputeInstanceWithPlacement", call=1, code=999)  # nothing was destroyed
    result = mig(run, layout={"3g.40gb": 2})
    assert result.failed and result["changed"] is False
    assert mig_uuids(sim) == uuids
    assert "GPU 0 was rolled back and is as it was (1 step(s) undone)" in result["msg"]
    assert "new UUIDs" not in result["msg"]


def test_completed_gpus_are_a_change_rolled_back_ones_are_not(sim, run):
    sim.create("h100-80gb:3")
    sim.fault("nvmlDeviceCreateGpuInstanceWithPlacement", call=3, code=999)  # GPU 1's first GI
    result = mig(run, layout={"3g.40gb": 2})
    assert result.failed and result["changed"] is True
    assert [g["changed"] for g in result["gpus"]] == [True, False, False]
    assert "GPU(s) 0 were reconfigured completely before the failure and keep the new layout" in result["msg"]
    assert "GPU 1 was rolled back and is as it was" in result["msg"]
    assert "GPU 2 was rolled back and is as it was" in result["msg"]  # its MIG mode was already enabled
    assert devices_of(sim, 0) == {"3g.40gb": 2} and sim.gpu(1)["mig_current"] == sim.gpu(2)["mig_current"] == 0


# -- Ampere: the rollback goes through a reset ----------------------------------------------------------------

def test_ampere_rollback_resets_the_gpu_back(sim, run, nvidia_smi):
    """reset: if_needed enabled MIG with a reset; the first GI fails: the rollback resets again, MIG is off."""
    sim.create("a100-40gb")
    before = signature(sim)
    sim.fault("nvmlDeviceCreateGpuInstanceWithPlacement", call=1, code=999)
    result = mig(run, layout={"3g.20gb": 2})
    assert result.failed and result["changed"] is False, result["msg"]
    assert signature(sim) == before and (sim.gpu(0)["mig_current"], sim.gpu(0)["mig_pending"]) == (0, 0)
    bus_id = sim.gpu(0)["bus_id"]
    assert nvidia_smi.read_text().splitlines() == ["-r -i %s" % bus_id] * 2
    assert "GPU 0 was rolled back and is as it was" in result["msg"]
    assert "reset the GPU (nvidia-smi -r -i %s)" % bus_id in result["rollback"][0]["steps"][-1]


def test_ampere_rollback_of_several_gpus_shares_one_reset(sim, run, nvidia_smi):
    sim.create("a100-40gb:2")
    before = signature(sim)
    sim.fault("nvmlDeviceGetHandleByUUID", call=2, code=999)  # reopening GPU 1 after the reset
    result = mig(run, layout={"7g.40gb": 1})
    assert result.failed and result["changed"] is False
    assert signature(sim) == before
    buses = ",".join(g["bus_id"] for g in sim.state()["gpus"])
    assert nvidia_smi.read_text().splitlines() == ["-r -i %s" % buses] * 2


@pytest.mark.usefixtures("nvidia_smi_once")
def test_ampere_rollback_that_cannot_reset_names_the_command(sim, run):
    """The forward reset works, the rollback's is refused: the message gives the one command that finishes it."""
    sim.create("a100-40gb")
    sim.fault("nvmlDeviceCreateGpuInstanceWithPlacement", call=1, code=999)
    result = mig(run, layout={"3g.20gb": 2})
    bus_id = sim.gpu(0)["bus_id"]
    assert result.failed and result["changed"] is True and result["gpus"][0]["changed"] is True
    assert "GPU 0 could NOT be fully restored" in result["msg"]
    assert "MIG mode is enabled (pending disabled), was disabled" in result["msg"]
    assert "finish the rollback with `nvidia-smi -r -i %s`" % bus_id in result["msg"]
    assert "Unable to reset this GPU: in use by another client" in result["msg"]
    assert result["rollback"][0]["command"] == "nvidia-smi -r -i %s" % bus_id
    sim.reset(bus_id)  # the command
    assert (sim.gpu(0)["mig_current"], sim.gpu(0)["mig_pending"]) == (0, 0)


def test_reset_never_rolls_back_a_pending_mode_without_a_reset(sim, run, nvidia_smi):
    sim.create("a100-40gb")
    mig(run, layout={"1g.5gb": 2})
    before = signature(sim)
    sim.fault("nvmlDeviceSetMigMode", call=1, code=999)
    result = mig(run, mode="disabled", reset="never")
    assert result.failed and result["changed"] is False and signature(sim) == before
    assert len(nvidia_smi.read_text().splitlines()) == 1  # the first run's enable only


# -- config files ----------------------------------------------------------------------------------------------

CONFIG = """version: v1
mig-configs:
  mixed:
    - device-filter: ["0x233010DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 2}
    - device-filter: "%s"
      devices: all
      mig-enabled: true
      mig-devices: {"7g.40gb": 1}
"""


@pytest.mark.parametrize("value", ["0xZZZ", "H100", "0x2330", "233010DE", "0x233010DE:0x1"])
def test_config_device_filter_is_checked_like_the_option(sim, run, tmp_path, value):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG % value)
    sim.create("h100-80gb")
    result = mig(run, config_file=str(path))
    assert result.failed and result["error_kind"] == "invalid_config", result["msg"]
    assert "%s: mig-configs.mixed[1]: device-filter entries must be PCI device ids such as 0x233010DE" % path \
        in result["msg"] and repr(value) in result["msg"]
    option = mig(run, layout={"3g.40gb": 2}, device_filter=[value])
    assert option.failed and "device_filter entries must be PCI device ids such as 0x233010DE" in option["msg"]
    assert sim.writes() == []


@pytest.mark.parametrize("data", [b"\xff\xfe\x00v\x00e\x00r", b"version: v1\nmig-configs: {a: \xe9}\n",
                                  b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_config_file_that_is_not_text(sim, run, tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    sim.create("h100-80gb")
    result = mig(run, config_file=str(path))
    assert result.failed and result["error_kind"] == "invalid_config", result
    assert "%s is not UTF-8 text" % path in result["msg"]
    assert sim.writes() == []


def test_config_entries_report_what_they_select_and_warn_when_none(sim, run, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG % "0x20B010DE")  # an A100 filter: a valid id, but no A100 here
    sim.create("h100-80gb:2")
    result = mig(run, config_file=str(path))
    assert not result.failed, result["msg"]
    assert [(e["entry"], e["selected"]) for e in result["config_entries"]] == [(0, [0, 1]), (1, [])]
    assert [g["config_entry"] for g in result["gpus"]] == ["mixed", "mixed"]
    assert [g["config_entry_index"] for g in result["gpus"]] == [0, 0]
    warnings = [w for w in warnings_of(result) if "selects no GPU" in w]
    assert len(warnings) == 1
    assert warnings[0].startswith("entry 1 of config mixed (device-filter 0x20B010DE, devices all) selects no GPU")
    assert "GPU 0 (NVIDIA H100 80GB HBM3, 0x233010DE)" in warnings[0]
    # an entry that selects a GPU warns about nothing
    sim.create("h100-80gb,a100-40gb")
    result = mig(run, config_file=str(path))
    assert not result.failed and not [w for w in warnings_of(result) if "selects no GPU" in w]
    assert [(e["entry"], e["selected"]) for e in result["config_entries"]] == [(0, [0]), (1, [1])]


def test_config_entry_with_an_index_the_host_lacks(sim, run, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("version: v1\nmig-configs:\n  c:\n    - devices: [5]\n      mig-enabled: true\n"
                    "      mig-devices: {7g.80gb: 1}\n")
    sim.create("h100-80gb")
    result = mig(run, config_file=str(path))
    assert not result.failed and result["changed"] is False
    assert any(w.startswith("entry 0 of config c (device-filter none, devices [5]) selects no GPU") for w in
               warnings_of(result))
    assert any(w.startswith("no GPU was selected: no entry of config c selects") for w in warnings_of(result))


# -- messages --------------------------------------------------------------------------------------------------

def test_a_refusal_shared_by_many_gpus_is_said_once(sim, run):
    sim.create("h100-80gb:8")
    result = mig(run, layout={"7g.80gb": 2})
    assert result.failed and result["error_kind"] == "does_not_fit"
    assert result["msg"].count("cannot fit") == 1 and len(result["msg"]) < 300, result["msg"]
    assert "layout {7g.80gb: 2} cannot fit on GPUs 0-7 (NVIDIA H100 80GB HBM3)" in result["msg"]
    assert [r["gpu"] for r in result["refused"]] == list(range(8))


def test_refusals_are_grouped_per_message(sim, run):
    sim.create("h100-80gb:3,a100-40gb:2,h100-80gb:1")
    sim.add_process(1, pid=71, name="trainer")
    result = mig(run, layout={"3g.40gb": 2})
    assert result.failed and result["error_kind"] == "invalid"
    assert result["msg"].count("unknown MIG profile '3g.40gb'") == 1
    assert "unknown MIG profile '3g.40gb' on GPUs 3-4 (NVIDIA A100-SXM4-40GB)" in result["msg"]
    assert "cannot change the MIG mode of GPU 1 (NVIDIA H100 80GB HBM3, " in result["msg"]
    assert "71 (trainer)" in result["msg"] and result["msg"].endswith("(nothing was changed)")
    assert sim.writes() == []


def test_busy_gpus_are_one_sentence_with_their_processes(sim, run):
    sim.create("h100-80gb:4")
    for index in range(4):
        sim.add_process(index, pid=100 + index, name="trainer")
    result = mig(run, layout={"7g.80gb": 1})
    assert result.failed and result["error_kind"] == "busy"
    assert result["msg"] == ("cannot change the MIG mode of GPUs 0-3 (NVIDIA H100 80GB HBM3): compute processes use "
                             "them: GPU 0: 100 (trainer); GPU 1: 101 (trainer); GPU 2: 102 (trainer); GPU 3: 103 "
                             "(trainer); stop them first (nothing was changed)")
    sim.create("h100-80gb:2")
    sim.add_process(1, pid=7777, name="job")
    result = mig(run, layout={"7g.80gb": 1})
    assert "cannot change the MIG mode of GPU 1 (NVIDIA H100 80GB HBM3, %s): compute processes use it: 7777 (job); " \
        "stop them first" % sim.gpu(1)["bus_id"] in result["msg"]


@pytest.mark.parametrize("args, kind", [
    ({"layout": {"3g.40gb": 1}}, "unknown_profile"),
    ({"layout": {"2c.1g.5gb": 1}}, "unknown_profile"),
    ({"layout": {"7g.40gb": 2}}, "does_not_fit"),
    ({"layout": {"4g.20gb": 1, "3g.20gb": 1, "1g.5gb": 1}}, "does_not_fit"),
    ({"layout": {"1g.5gb": 8}}, "does_not_fit"),
    ({"layout": {"4g.20gb": 1, "3g.20gb": 2}}, "does_not_fit"),
])
def test_layout_errors_name_the_gpu(sim, run, args, kind):
    sim.create("h100-80gb,a100-40gb")
    result = mig(run, devices=[1], **args)
    assert result.failed and result["error_kind"] == kind
    assert "GPU 1 (NVIDIA A100-SXM4-40GB, %s)" % sim.gpu(1)["bus_id"] in result["msg"], result["msg"]
    assert "this GPU" not in result["msg"]


def test_layout_errors_name_the_config_entry(sim, run, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("version: v1\nmig-configs:\n  c:\n    - devices: [0]\n      mig-enabled: false\n"
                    "    - devices: [1]\n      mig-enabled: true\n      mig-devices: {1g.10gb: 1}\n")
    sim.create("h100-80gb,l4")
    result = mig(run, config_file=str(path))
    assert result.failed and result["error_kind"] == "not_supported"
    assert re.search(r"GPU 1 \(NVIDIA L4, [^)]*\) \[entry 1 of config c\] does not support MIG", result["msg"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_check_mode_as_non_root_warns_that_the_run_needs_root(sim):
    sim.create("h100-80gb:2")
    result, final = run_mig_as_nobody(sim, {"layout": BALANCED}, check_mode=True)
    assert result.get("failed") is not True, result
    assert result["changed"] is True and result["plan"]
    assert any("check mode ran as a non-root user (uid 65534)" in w and "the real run does" in w and
               "use become" in w for w in warnings_of(result)), result["warnings"]
    assert any("without the host MIG lock" in w for w in warnings_of(result))
    assert final["gpus"] == sim.state()["gpus"]
    result, final = run_mig_as_nobody(sim, {"layout": BALANCED})
    assert result.get("failed") is True and result["error_kind"] == "no_permission"
    assert "use become" in result["msg"] and final["gpus"] == sim.state()["gpus"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_non_root_with_a_writable_lock_fails_on_the_first_write(sim):
    sim.create("h100-80gb")
    shared = tempfile.mkdtemp(prefix="gpuops-mig-lock-")
    os.chmod(shared, 0o777)
    try:
        result, final = run_mig_as_nobody(sim, {"layout": BALANCED}, lock_file=os.path.join(shared, "mig.lock"))
    finally:
        shutil.rmtree(shared)
    assert result.get("failed") is True and result["error_kind"] == "no_permission"
    assert "needs root: use become" in result["msg"] and "GPU 0 is as it was" in result["msg"]
    assert result["changed"] is False and final["gpus"] == sim.state()["gpus"]


# -- the diff shows what is kept -------------------------------------------------------------------------------

def test_diff_lists_kept_destroyed_and_created_devices(sim, run):
    sim.create("h100-80gb")
    mig(run, layout=BALANCED)
    by_profile = dict((ci["profile_id"], ci["uuid"]) for gi in sim.gpu(0)["gpu_instances"]
                      for ci in gi["compute_instances"] if gi["start"] == 0)
    kept_uuid = list(by_profile.values())[0]
    doomed = mig_uuids(sim) - {kept_uuid}
    check = mig(run, check_mode=True, diff=True, layout={"3g.40gb": 2})
    prepared = check["diff"]["prepared"]
    assert prepared.startswith("GPU 0 NVIDIA H100 80GB HBM3 (%s): 1 MIG device(s) kept, 2 destroyed, 1 created"
                               % sim.gpu(0)["bus_id"]), prepared
    lines = prepared.splitlines()
    keep = [line for line in lines if line.lstrip().startswith("keep")]
    assert len(keep) == 1 and kept_uuid in keep[0] and "same UUID: its clients are not disturbed" in keep[0]
    assert "memory slices 0-3" in keep[0]
    destroyed = [line for line in lines if line.lstrip().startswith("destroy")]
    assert sorted(u for line in destroyed for u in doomed if u in line) == sorted(doomed)
    create = [line for line in lines if line.lstrip().startswith("create")]
    assert len(create) == 1 and "3g.40gb" in create[0] and "memory slices 4-7" in create[0] and "new UUID" in create[0]
    devices = check["gpus"][0]["mig_devices"]
    assert [d["uuid"] for d in devices["kept"]] == [kept_uuid] and devices["created"][0]["uuid"] is None

    result = mig(run, diff=True, layout={"3g.40gb": 2})
    created = result["gpus"][0]["mig_devices"]["created"]
    assert len(created) == 1 and created[0]["uuid"] in mig_uuids(sim) and kept_uuid in mig_uuids(sim)
    assert created[0]["uuid"] in result["diff"]["prepared"]
    assert "diff" not in mig(run, layout={"3g.40gb": 2})  # no diff without --diff


def test_diff_of_a_mode_change(sim, run, nvidia_smi):
    sim.create("a100-40gb")
    result = mig(run, check_mode=True, diff=True, layout={"7g.40gb": 1}, reset="never")
    prepared = result["diff"]["prepared"]
    assert "MIG mode disabled -> disabled (pending enabled: needs a GPU reset)" in prepared
    assert "the layout is applied once the pending MIG mode takes effect" in prepared
    result = mig(run, check_mode=True, diff=True, layout={"7g.40gb": 1})
    assert "MIG mode disabled -> enabled; 0 MIG device(s) kept, 0 destroyed, 1 created" in result["diff"]["prepared"]
