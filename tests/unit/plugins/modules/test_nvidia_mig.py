"""nvidia_mig on the NVML simulator: transitions, check mode, idempotence, busy GPUs, Ampere reset,
rollback under injected faults, validation, config files, host lock."""

from __future__ import annotations

import fcntl
import os

import pytest
from hypothesis import HealthCheck, given, settings

from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mig
from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_plan as planner
from mig_helpers import (FUNCTION_OF_ACTION, clear_faults, devices_of, expected_devices, feasible_layouts,
                         signature)

pytestmark = pytest.mark.usefixtures("mig_lock")

# Common layouts per model (mig-parted's default configs use these shapes).
LAYOUTS = {
    "h100-80gb": [{"1g.10gb": 7}, {"2g.20gb": 3}, {"3g.40gb": 2}, {"7g.80gb": 1},
                  {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}, {"4g.40gb": 1, "3g.40gb": 1},
                  {"1c.3g.40gb": 3, "3g.40gb": 1}, {"1g.20gb": 4}, {"1g.10gb+me": 1, "1g.10gb": 6}],
    "h200-141gb": [{"1g.18gb": 7}, {"3g.71gb": 2}, {"7g.141gb": 1}, {"3g.71gb": 1, "2g.35gb": 1, "1g.18gb": 1},
                   {"1g.35gb": 4}],
    "a100-40gb": [{"1g.5gb": 7}, {"2g.10gb": 3}, {"3g.20gb": 2}, {"7g.40gb": 1},
                  {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 1}, {"1c.3g.20gb": 3}],
    "a100-80gb": [{"1g.10gb": 7}, {"2g.20gb": 3}, {"3g.40gb": 2}, {"7g.80gb": 1}, {"4g.40gb": 1, "1g.10gb": 3}],
    "a30": [{"1g.6gb": 4}, {"2g.12gb": 2}, {"4g.24gb": 1}, {"2g.12gb": 1, "1g.6gb": 2},
            {"2g.12gb+me": 1, "1g.6gb+me": 1, "1g.6gb": 1}],
}


def mig(run, check_mode=False, diff=False, **args):
    return run(nvidia_mig, args, check_mode=check_mode, diff=diff)


def enable_mig_now(sim, *indices):
    with sim.edit() as data:
        for index in indices:
            data["gpus"][index]["mig_current"] = data["gpus"][index]["mig_pending"] = 1


def uuids(sim, index):
    return sorted(ci["uuid"] for gi in sim.gpu(index)["gpu_instances"] for ci in gi["compute_instances"])


def uuid_by_placement(sim, index):
    return dict(((gi["profile_id"], gi["start"], ci["profile_id"], ci["start"]), ci["uuid"])
                for gi in sim.gpu(index)["gpu_instances"] for ci in gi["compute_instances"])


# -- transitions ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(LAYOUTS))
def test_transitions_between_common_layouts(sim, run, model):
    sim.create(model)
    enable_mig_now(sim, 0)
    layouts = LAYOUTS[model]
    sequence = layouts + layouts[::-1][1:] + [layouts[0], layouts[-1]]
    for layout in sequence:
        before = uuid_by_placement(sim, 0)
        result = mig(run, layout=layout)
        assert not result.failed, result["msg"]
        assert devices_of(sim, 0) == expected_devices(layout)
        assert result["gpus"][0]["after"]["devices"] == expected_devices(layout)
        after = uuid_by_placement(sim, 0)
        destroyed = [s for s in result["plan"] if s["action"] == "destroy_compute_instance"]
        # kept MIG devices keep their UUID; only destroyed ones disappear
        assert set(before.values()) - set(after.values()) == set(s["uuid"] for s in destroyed)
        again = mig(run, layout=layout)
        assert again["changed"] is False and again["plan"] == []


@pytest.mark.parametrize("model", ["h100-80gb", "h200-141gb"])
def test_hopper_enables_mig_at_once_and_applies_the_layout(sim, run, model):
    sim.create(model)
    layout = LAYOUTS[model][3]
    result = mig(run, layout=layout, diff=True)
    assert result["changed"] and not result["reset_required"] and not result["reboot_required"]
    assert [s["action"] for s in result["plan"]][0] == "set_mig_mode"
    assert sim.gpu(0)["mig_current"] == 1
    assert devices_of(sim, 0) == expected_devices(layout)
    assert "[MIG disabled]" in result["diff"]["before"]
    assert "[%s" % sorted(layout, key=lambda k: -int(k[0]))[0] in result["diff"]["after"]


def test_kept_instances_keep_uuids_and_placements(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1})
    kept = [gi for gi in sim.gpu(0)["gpu_instances"] if gi["profile_id"] == 9][0]
    result = mig(run, layout={"3g.40gb": 2})
    assert [s["action"] for s in result["plan"]] == [
        "destroy_compute_instance", "destroy_gpu_instance", "destroy_compute_instance", "destroy_gpu_instance",
        "create_gpu_instance", "create_compute_instance"]
    still = [gi for gi in sim.gpu(0)["gpu_instances"] if gi["start"] == kept["start"]][0]
    assert still == kept


def test_compute_instances_are_added_inside_an_existing_gi(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"1c.3g.40gb": 2})
    before = uuids(sim, 0)
    result = mig(run, layout={"1c.3g.40gb": 3})
    assert [s["action"] for s in result["plan"]] == ["create_compute_instance"]
    assert set(before) <= set(uuids(sim, 0)) and len(uuids(sim, 0)) == 3
    assert devices_of(sim, 0) == {"1c.3g.40gb": 3}


def test_media_engine_profile(sim, run):
    sim.create("h100-80gb")
    result = mig(run, layout={"1g.10gb+me": 1, "3g.40gb": 1})
    assert not result.failed and devices_of(sim, 0) == {"1g.10gb+me": 1, "3g.40gb": 1}


def test_mode_only_leaves_instances(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"2g.20gb": 2})
    result = mig(run, mode="enabled", layout={})
    assert result["changed"] is False and devices_of(sim, 0) == {"2g.20gb": 2}


def test_disable_destroys_everything_then_the_mode(sim, run):
    sim.create("h100-80gb:2")
    mig(run, layout={"2g.20gb": 2})
    result = mig(run, mode="disabled")
    actions = [s["action"] for s in result["plan"]]
    assert actions.count("destroy_gpu_instance") == 4 and actions.count("set_mig_mode") == 2
    assert [g["mig_current"] for g in sim.state()["gpus"]] == [0, 0]
    assert all(not g["gpu_instances"] for g in sim.state()["gpus"])
    assert mig(run, mode="disabled")["changed"] is False


def test_selection_by_uuid_bus_id_and_filter(sim, run):
    sim.create("h100-80gb:2,a100-40gb:1")
    uuid = sim.gpu(1)["uuid"]
    result = mig(run, devices=[uuid], layout={"7g.80gb": 1})
    assert [g["index"] for g in result["gpus"]] == [1]
    result = mig(run, device_filter=["0x233010DE"], layout={"3g.40gb": 2})
    assert [g["index"] for g in result["gpus"]] == [0, 1]
    assert sim.gpu(2)["mig_current"] == 0 and sim.gpu(2)["mig_pending"] == 0
    result = mig(run, devices=["00000000:18:00.0"], layout={"1g.10gb": 7})
    assert devices_of(sim, 0) == {"1g.10gb": 7}


# -- check mode and diff ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(LAYOUTS))
def test_check_mode_plans_without_writing(sim, run, model):
    sim.create(model)
    before = signature(sim)
    layout = LAYOUTS[model][-1]
    result = mig(run, layout=layout, check_mode=True, diff=True)
    assert result["changed"] is True
    actions = [s["action"] for s in result["plan"]]
    assert actions[0] == "set_mig_mode" and "create_gpu_instance" in actions
    assert result["gpus"][0]["after"]["devices"] == expected_devices(layout)
    assert sim.writes() == [] and signature(sim) == before
    assert "MIG disabled" in result["diff"]["before"]


def test_check_mode_on_a_configured_gpu(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"1g.10gb": 7})
    sim.create("h100-80gb")  # fresh library: count writes from here
    enable_mig_now(sim, 0)
    mig(run, layout={"1g.10gb": 7})
    calls = len(sim.writes())
    result = mig(run, layout={"3g.40gb": 1, "1g.10gb": 4}, check_mode=True, diff=True)
    assert len(sim.writes()) == calls
    assert result["gpus"][0]["after"]["devices"] == {"3g.40gb": 1, "1g.10gb": 4}
    assert sum(1 for s in result["plan"] if s["action"] == "destroy_gpu_instance") == 3
    assert "3g.40gb" in result["diff"]["after"] and "3g.40gb" not in result["diff"]["before"]


def test_diff_only_in_diff_mode(sim, run):
    sim.create("h100-80gb")
    assert "diff" not in mig(run, layout={"7g.80gb": 1}, check_mode=True)


# -- busy GPUs ---------------------------------------------------------------------------------------------

def test_processes_on_destroyed_instances_stop_the_run(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"3g.40gb": 2})
    gi = sim.gpu(0)["gpu_instances"][0]
    sim.add_process(0, pid=4321, name="train.py", gi=gi["id"], ci=0)
    sim.create  # noqa: B018
    before = signature(sim)
    result = mig(run, layout={"1g.10gb": 7})
    assert result.failed and result["error_kind"] == "busy"
    assert "4321 (train.py)" in result["msg"] and "nothing was changed" in result["msg"]
    assert signature(sim) == before


def test_processes_on_kept_instances(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1})
    kept = [gi for gi in sim.gpu(0)["gpu_instances"] if gi["profile_id"] == 9][0]
    sim.add_process(0, pid=777, name="serve", gi=kept["id"], ci=0)
    before = signature(sim)
    result = mig(run, layout={"3g.40gb": 2})
    assert result.failed and "allow_busy_kept_instances" in result["msg"] and "777 (serve)" in result["msg"]
    assert signature(sim) == before
    result = mig(run, layout={"3g.40gb": 2}, allow_busy_kept_instances=True)
    assert not result.failed and devices_of(sim, 0) == {"3g.40gb": 2}
    # creating only (nothing destroyed) never needs the option
    mig_result = mig(run, layout={"3g.40gb": 2})
    assert mig_result["changed"] is False


def test_processes_block_a_mode_change(sim, run):
    sim.create("h100-80gb")
    sim.add_process(0, pid=99, name="python3")
    result = mig(run, layout={"7g.80gb": 1})
    assert result.failed and result["error_kind"] == "busy" and "99 (python3)" in result["msg"]
    assert sim.writes() == []


# -- Ampere: pending mode and reset -------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["a100-40gb", "a100-80gb", "a30"])
def test_ampere_pending_mode_is_applied_by_a_reset(sim, run, nvidia_smi, model):
    sim.create(model)
    layout = LAYOUTS[model][3]
    result = mig(run, layout=layout)
    assert not result.failed, result["msg"]
    assert [s["action"] for s in result["plan"]][:2] == ["set_mig_mode", "reset_gpu"]
    assert not result["reset_required"] and not result["reboot_required"]
    assert sim.gpu(0)["mig_current"] == 1 and devices_of(sim, 0) == expected_devices(layout)
    assert nvidia_smi.read_text().split() == ["-r", "-i", sim.gpu(0)["bus_id"]]


def test_reset_never_reports_and_defers_the_layout(sim, run, nvidia_smi):
    sim.create("a100-40gb:2")
    result = mig(run, layout={"3g.20gb": 2}, reset="never")
    assert result["changed"] and result["reset_required"] and not result["reboot_required"]
    assert all(not g["layout_applied"] for g in result["gpus"])
    assert [(g["mig_current"], g["mig_pending"]) for g in sim.state()["gpus"]] == [(0, 1), (0, 1)]
    assert not os.path.exists(str(nvidia_smi))
    result = mig(run, layout={"3g.20gb": 2})
    assert not result.failed and [s["action"] for s in result["gpus"][0]["plan"]][0] == "reset_gpu"
    assert nvidia_smi.read_text().split() == ["-r", "-i", "%s,%s" % (sim.gpu(0)["bus_id"], sim.gpu(1)["bus_id"])]
    assert devices_of(sim, 0) == devices_of(sim, 1) == {"3g.20gb": 2}


def test_no_nvidia_smi_means_reboot_required(sim, run, no_nvidia_smi):
    sim.create("a100-80gb")
    result = mig(run, layout={"7g.80gb": 1})
    assert result["reset_required"] and result["reboot_required"]
    assert "nvidia-smi was not found" in result["gpus"][0]["reset_problem"]
    assert sim.gpu(0)["mig_pending"] == 1 and sim.gpu(0)["gpu_instances"] == []
    sim.reboot()
    result = mig(run, layout={"7g.80gb": 1})
    assert not result.failed and devices_of(sim, 0) == {"7g.80gb": 1}


def test_failed_reset_means_reboot_required(sim, run, tmp_path, monkeypatch):
    sim.create("a30")
    bin_dir = tmp_path / "failing-bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'Unable to reset this GPU: Not Supported in a VM' >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    result = mig(run, layout={"4g.24gb": 1})
    assert result["reboot_required"] and "Not Supported in a VM" in result["gpus"][0]["reset_problem"]


def test_ampere_disable_goes_through_reset(sim, run, nvidia_smi):
    sim.create("a100-40gb")
    mig(run, layout={"1g.5gb": 7})
    result = mig(run, mode="disabled")
    assert not result.failed and sim.gpu(0)["mig_current"] == 0 and sim.gpu(0)["gpu_instances"] == []


def test_pending_change_is_cancelled_without_reset(sim, run, no_nvidia_smi):
    sim.create("a100-40gb")
    mig(run, mode="enabled", reset="never")
    assert sim.gpu(0)["mig_pending"] == 1
    result = mig(run, mode="disabled")
    assert result["changed"] and not result["reset_required"]
    assert [s["action"] for s in result["plan"]] == ["set_mig_mode"]
    assert (sim.gpu(0)["mig_current"], sim.gpu(0)["mig_pending"]) == (0, 0)


def test_activation_status_in_use_names_the_clients(sim, run, nvidia_smi):
    sim.create("a100-40gb")
    sim.fault("nvmlDeviceSetMigMode", call=1, code=19)
    result = mig(run, layout={"7g.40gb": 1})
    assert result.failed and "dcgm" in result["msg"] and "nvidia-persistenced" in result["msg"]
    assert (sim.gpu(0)["mig_current"], sim.gpu(0)["mig_pending"]) == (0, 0)


def test_activation_status_in_use_rolls_the_pending_mode_back(sim, run, nvidia_smi):
    """SetMigMode succeeds but reports IN_USE as its activation status (a client holds the GPU)."""
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig
    from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlError, NvmlSession

    sim.create("a100-40gb")
    sim.add_process(0, pid=31, name="dcgm-exporter")
    with NvmlSession() as session:
        gpu = session.select()[0]
        work = _mig.GpuWork(gpu, _mig.Target(gpu, "enabled"))
        work.state = _mig.snapshot(session, gpu)
        work.catalog = planner.Catalog([])
        with pytest.raises(NvmlError) as info:
            _mig.MigWriter(session, gpu).set_mode(1)
        assert info.value.kind == "in_use" and "kubelet" in info.value.message
        assert sim.gpu(0)["mig_pending"] == 1
        outcome = _mig.restore(session, work)
    assert outcome["restored"] and (sim.gpu(0)["mig_current"], sim.gpu(0)["mig_pending"]) == (0, 0)


# -- rollback under injected faults -----------------------------------------------------------------------

ROLLBACK_CASES = [
    ("h100-80gb", None, {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}),
    ("h100-80gb", {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}, {"3g.40gb": 2}),
    ("h100-80gb", {"1g.10gb": 7}, {"1c.3g.40gb": 3, "4g.40gb": 1}),
    ("h200-141gb", {"1g.18gb": 7}, {"7g.141gb": 1}),
    ("a100-80gb", {"2g.20gb": 3, "1g.10gb": 1}, {"4g.40gb": 1, "1c.3g.40gb": 2}),
    ("a30", {"1g.6gb": 4}, {"2g.12gb+me": 1, "1g.6gb+me": 1, "1g.6gb": 1}),
    ("h100-80gb", {"1c.3g.40gb": 3, "3g.40gb": 1}, "disabled"),
]


@pytest.mark.parametrize("model, start, target", ROLLBACK_CASES)
def test_fault_at_every_step_rolls_back(sim, run, model, start, target):
    sim.create(model)
    if start is not None:
        enable_mig_now(sim, 0)
        mig(run, layout=start)
    args = {"mode": "disabled"} if target == "disabled" else {"layout": target}
    plan = mig(run, check_mode=True, **args)["plan"]
    assert plan
    seen = {}
    for step in plan:
        function = FUNCTION_OF_ACTION[step["action"]]
        seen[function] = seen.get(function, 0) + 1
        before = signature(sim)
        sim.fault(function, call=seen[function], code=999)
        result = mig(run, **args)
        clear_faults(sim)
        assert result.failed, "no failure injected at %s" % step["description"]
        assert signature(sim) == before, "not restored after a fault at %s" % step["description"]
        assert "is as it was" in result["msg"], result["msg"]
        assert all(r["restored"] for r in result["rollback"])
    final = mig(run, **args)
    assert not final.failed
    if target != "disabled":
        assert devices_of(sim, 0) == expected_devices(target)


def test_rollback_reports_what_it_could_not_restore(sim, run):
    sim.create("h100-80gb")
    mig(run, layout={"3g.40gb": 2})
    # the second GI destroy fails, and so does recreating the first GI during the rollback
    sim.fault("nvmlGpuInstanceDestroy", call=2, code=999)
    sim.fault("nvmlDeviceCreateGpuInstanceWithPlacement", call=1, code=999)
    result = mig(run, layout={"7g.80gb": 1})
    assert result.failed and "could NOT be fully restored" in result["msg"]
    assert "recreate GPU instance 3g.40gb" in result["msg"]
    assert result["rollback"][0]["restored"] is False


def test_rollback_of_one_gpu_keeps_completed_gpus(sim, run):
    sim.create("h100-80gb:2")
    sim.fault("nvmlDeviceCreateGpuInstanceWithPlacement", call=3, code=999)
    result = mig(run, layout={"3g.40gb": 2})
    assert result.failed and result["failed_gpu"] == 1
    assert devices_of(sim, 0) == {"3g.40gb": 2}
    assert sim.gpu(1)["gpu_instances"] == [] and sim.gpu(1)["mig_current"] == 0
    assert "GPU(s) 0 were reconfigured completely" in result["msg"]


# -- validation: nothing is touched ----------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    ({"layout": {"1g.11gb": 1}}, "valid profiles: 1g.10gb"),
    ({"layout": {"1g.10gb-me": 1}}, "1g.10gb+me"),
    ({"layout": {"3g.40gb": 3}}, "at most 2"),
    ({"layout": {"4g.40gb": 1, "3g.40gb": 1, "1g.10gb": 1}}, "9 memory slices"),
    ({"layout": {"1g.10gb": 0}}, "positive integer"),
    ({"layout": {"1g.10gb": -1}}, "positive integer"),
    ({"layout": {"7g.80gb": 1}, "mode": "disabled"}, "mode disabled"),
    ({"layout": {"1g.10gb": 1}, "devices": [2]}, "does not support MIG"),
    ({"layout": {"1g.10gb": 1}, "devices": [7]}, "no GPU with index 7"),
])
def test_validation_errors_touch_nothing(sim, run, args, words):
    sim.create("h100-80gb:2,l4:1")
    result = mig(run, **args)
    assert result.failed and words in result["msg"], result["msg"]
    assert sim.writes() == []


def test_one_invalid_gpu_stops_every_gpu(sim, run):
    sim.create("h100-80gb,a30")
    result = mig(run, layout={"3g.40gb": 2})
    assert result.failed and "GPU 1" in result["msg"] and "valid profiles: 1g.6gb" in result["msg"]
    assert sim.writes() == []


def test_l4_disabled_is_fine(sim, run):
    sim.create("l4")
    result = mig(run, mode="disabled")
    assert not result.failed and result["changed"] is False
    assert result["gpus"][0]["before"]["mig_capable"] is False


@pytest.mark.parametrize("args, words", [
    ({}, "one of mode, layout or config_file is required"),
    ({"layout": {"7g.80gb": 1}, "config_file": "/x.yaml"}, "layout and config_file are mutually exclusive"),
    ({"mode": "enabled", "config_file": "/x.yaml"}, "mode and config_file are mutually exclusive"),
    ({"config_name": "a", "mode": "enabled"}, "config_name requires config_file"),
    ({"mode": "enabled", "lock_timeout": -1}, "lock_timeout must not be negative"),
    ({"layout": {"7g.80gb": "many"}}, "must be a positive integer"),
])
def test_option_combinations(sim, run, args, words):
    sim.create("h100-80gb")
    result = mig(run, **args)
    assert result.failed and words in result["msg"], result["msg"]
    assert result["error_kind"] in ("invalid_argument", "invalid_layout")
    assert sim.writes() == []


def test_validate_desired_normalizes_what_the_role_writes():
    """The mig role's mig.json goes through the same validator as the module's parameters."""
    from ansible_collections.gpuops.nvidia.plugins.module_utils._mig import MIG_SPEC, validate_desired

    desired = validate_desired({"layout": {"3g.40gb": "2", "1c.3g.40gb": 1.0}, "devices": "0,1",
                                "device_filter": [], "lock_timeout": "30", "allow_busy_kept_instances": "yes"})
    assert set(desired) == set(MIG_SPEC)
    assert desired["layout"] == {"3g.40gb": 2, "1c.3g.40gb": 1}
    assert desired["devices"] == ["0", "1"] and desired["device_filter"] is None
    assert (desired["mode"], desired["reset"], desired["lock_timeout"]) == (None, "if_needed", 30)
    assert desired["allow_busy_kept_instances"] is True
    assert validate_desired(desired) == desired


# -- config files ------------------------------------------------------------------------------------------

CONFIG = """
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
      mig-devices: {}
  mixed:
    - device-filter: ["0x233010DE"]
      devices: all
      mig-enabled: true
      mig-devices: {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}
    - device-filter: "0x20B210DE"
      devices: all
      mig-enabled: true
      mig-devices: {"1c.3g.40gb": 3, "4g.40gb": 1}
"""


def test_config_file_equals_the_layout(sim, run, tmp_path, nvidia_smi):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    sim.create("h100-80gb:2,a100-80gb:1,l4:1")
    result = mig(run, config_file=str(path), config_name="mixed")
    assert not result.failed, result["msg"]
    assert [g["index"] for g in result["gpus"]] == [0, 1, 2]
    assert devices_of(sim, 0) == devices_of(sim, 1) == {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}
    assert devices_of(sim, 2) == {"1c.3g.40gb": 3, "4g.40gb": 1}
    by_file = signature(sim)
    sim.create("h100-80gb:2,a100-80gb:1,l4:1")
    mig(run, device_filter=["0x233010DE"], layout={"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1})
    mig(run, devices=[2], layout={"1c.3g.40gb": 3, "4g.40gb": 1})
    assert signature(sim) == by_file
    assert mig(run, config_file=str(path), config_name="mixed")["changed"] is False
    result = mig(run, config_file=str(path), config_name="all-disabled", devices=[0, 1, 2])
    assert not result.failed and all(g["mig_current"] == 0 for g in sim.state()["gpus"])


@pytest.mark.parametrize("text, name, words, kind", [
    (CONFIG, "nope", "it has: all-disabled, mixed", "invalid_config"),
    (CONFIG, None, "several configs", "invalid_config"),
    ("version: v2\nmig-configs: {}\n", "a", "unsupported version", "invalid_config"),
    ("mig-configs: {a: [{devices: all, mig-enabled: false}]}\n", "a", "version: v1` is missing", "invalid_config"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: maybe}]}\n", "a", "mig-enabled must be true or "
     "false", "invalid_config"),
    ("version: v1\nmig-configs: [\n", "a", "is not valid YAML", "invalid_config"),
    (None, "a", "cannot read mig-parted config", "invalid_config"),
    ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, mig-devices: {9g.9gb: 1}}]}\n", "a",
     "unknown MIG profile '9g.9gb'", "unknown_profile"),
])
def test_config_file_errors_touch_nothing(sim, run, tmp_path, text, name, words, kind):
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    sim.create("h100-80gb")
    args = {"config_file": str(path)}
    if name:
        args["config_name"] = name
    result = mig(run, **args)
    assert result.failed and words in result["msg"], result["msg"]
    # every failure says what kind it is (the config-file path once failed without error_kind)
    assert result["error_kind"] == kind and "nvml_code" not in result
    assert sim.writes() == []


def test_config_file_errors_come_before_nvml(sim, run, tmp_path):
    """The file and the config name are checked before any GPU is read, even when NVML would fail."""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    sim.create("h100-80gb")
    sim.fault("nvmlDeviceGetCount_v2", call=1, code=999)
    result = mig(run, config_file=str(path), config_name="nope")
    assert result["error_kind"] == "invalid_config" and "nope" in result["msg"]


def test_config_file_in_json_needs_no_pyyaml(sim, run, tmp_path, monkeypatch):
    """The mig role ships the config it parsed on the controller as JSON: nodes without PyYAML read it."""
    import json

    import yaml
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_config

    path = tmp_path / "mig-parted.yaml"
    path.write_text(json.dumps(yaml.safe_load(CONFIG), indent=2))
    monkeypatch.setattr(_mig_config, "yaml", None)
    sim.create("h100-80gb")
    result = mig(run, config_file=str(path), config_name="mixed")
    assert not result.failed, result["msg"]
    assert devices_of(sim, 0) == {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}
    path.write_text(CONFIG)
    result = mig(run, config_file=str(path), config_name="mixed")
    assert result.failed and result["error_kind"] == "pyyaml_missing" and "python3-yaml" in result["msg"]


# -- host lock ---------------------------------------------------------------------------------------------

def test_lock_timeout(sim, run, mig_lock):
    sim.create("h100-80gb")
    with open(mig_lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = mig(run, layout={"7g.80gb": 1}, lock_timeout=1)
    assert result.failed and "holds the host lock" in result["msg"]
    assert sim.writes() == []
    assert not mig(run, layout={"7g.80gb": 1}, lock_timeout=1).failed


def test_lock_file_option(sim, run, tmp_path):
    sim.create("h100-80gb")
    path = tmp_path / "sub" / "dir" / "mig.lock"
    assert not mig(run, layout={"7g.80gb": 1}, lock_file=str(path)).failed
    assert path.exists()


# -- property: random start/target layouts through the module on the simulator -----------------------

@pytest.mark.parametrize("model", ["h100-80gb", "a100-40gb", "a30"])
def test_random_transitions_on_the_simulator(sim, run, model):
    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(start=feasible_layouts(model, 7), target=feasible_layouts(model, 7))
    def check(start, target):
        sim.create(model)
        enable_mig_now(sim, 0)
        if start:
            assert not mig(run, layout=start).failed
        before = uuid_by_placement(sim, 0)
        result = mig(run, layout=target) if target else mig(run, mode="enabled")
        assert not result.failed, result["msg"]
        if target:
            assert devices_of(sim, 0) == expected_devices(target)
        # every MIG device the plan did not destroy is still there with its UUID
        destroyed = set(s["uuid"] for s in result["plan"] if s["action"] == "destroy_compute_instance")
        assert set(before.values()) - destroyed <= set(uuid_by_placement(sim, 0).values())
        if start == target:
            assert result["changed"] is False

    check()
