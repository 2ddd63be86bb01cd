"""nvidia_persistence through main() on the NVML simulator."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest
from ansible.module_utils.common import warnings as ansible_warnings

from ansible_collections.gpuops.nvidia.plugins.module_utils import _persistence
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_persistence as module

HERE = os.path.dirname(os.path.abspath(__file__))
SIMULATOR = os.path.abspath(os.path.join(HERE, "..", "..", "..", "simulator"))
COLLECTIONS = os.path.abspath(os.path.join(
    sys.modules["ansible_collections.gpuops.nvidia.plugins.modules.nvidia_persistence"].__file__,
    "..", "..", "..", "..", "..", ".."))


@pytest.fixture(autouse=True)
def fresh_warnings():
    """module.warn() collects into a process-wide registry: start every test with it empty."""
    ansible_warnings._global_warnings.clear()
    yield
    ansible_warnings._global_warnings.clear()


def warnings_of(result):
    """The warning texts of a result (ansible-core 2.19 returns them as WarningSummary dictionaries)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


@pytest.fixture
def run_dir(tmp_path):
    """An empty nvidia-persistenced runtime directory: no daemon."""
    path = tmp_path / "nvidia-persistenced"
    path.mkdir()
    return str(path)


def persist(run, args=None, run_dir=None, **kwargs):
    args = dict(args or {})
    if run_dir is not None:
        args.setdefault("persistenced_run_dir", run_dir)
    ansible_warnings._global_warnings.clear()
    return run(module, args, **kwargs)


def modes(sim):
    return [gpu["persistence_mode"] for gpu in sim.state()["gpus"]]


# -- enable / disable / idempotence --------------------------------------------------------------------


def test_enable_all_gpus(sim, run, run_dir):
    sim.create("h100-80gb:2")
    result = persist(run, {"state": "enabled"}, run_dir)
    assert not result.failed, result
    assert result["changed"] is True
    assert modes(sim) == [1, 1]
    assert [(g["index"], g["before"], g["after"], g["changed"]) for g in result["gpus"]] == [
        (0, "disabled", "enabled", True), (1, "disabled", "enabled", True)]
    assert result["gpus"][0]["uuid"] == sim.gpu(0)["uuid"]
    assert result["gpus"][0]["bus_id"] == "00000000:18:00.0"
    assert result["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert result["persistenced"] == {"running": False, "pid": None, "evidence": None}


def test_enable_is_idempotent(sim, run, run_dir):
    sim.create("h100-80gb:2")
    persist(run, {"state": "enabled"}, run_dir)
    second = persist(run, {"state": "enabled"}, run_dir)
    assert second["changed"] is False
    assert warnings_of(second) == []
    assert sim.writes() == ["nvmlDeviceSetPersistenceMode"] * 2
    assert all(not g["changed"] and g["before"] == g["after"] == "enabled" for g in second["gpus"])


def test_default_state_is_enabled(sim, run, run_dir):
    sim.create("l4:1")
    result = persist(run, {}, run_dir)
    assert result["changed"] is True and result["state"] == "enabled"
    assert modes(sim) == [1]


def test_disable(sim, run, run_dir):
    sim.create("h100-80gb:2")
    with sim.edit() as data:
        for gpu in data["gpus"]:
            gpu["persistence_mode"] = 1
    result = persist(run, {"state": "disabled"}, run_dir)
    assert result["changed"] is True
    assert modes(sim) == [0, 0]
    assert warnings_of(result) == []
    again = persist(run, {"state": "disabled"}, run_dir)
    assert again["changed"] is False


def test_only_gpus_that_differ_are_written(sim, run, run_dir):
    sim.create("h100-80gb:3")
    with sim.edit() as data:
        data["gpus"][1]["persistence_mode"] = 1
    result = persist(run, {"state": "enabled"}, run_dir)
    assert [g["changed"] for g in result["gpus"]] == [True, False, True]
    assert sim.writes() == ["nvmlDeviceSetPersistenceMode"] * 2


# -- check mode and diff ---------------------------------------------------------------------------------


def test_check_mode_writes_nothing(sim, run, run_dir):
    sim.create("h100-80gb:2")
    result = persist(run, {"state": "enabled"}, run_dir, check_mode=True)
    assert result["changed"] is True
    assert [g["after"] for g in result["gpus"]] == ["enabled", "enabled"]
    assert sim.writes() == []
    assert modes(sim) == [0, 0]


def test_check_mode_when_already_enabled_is_unchanged(sim, run, run_dir):
    sim.create("h100-80gb:1")
    with sim.edit() as data:
        data["gpus"][0]["persistence_mode"] = 1
    result = persist(run, {"state": "enabled"}, run_dir, check_mode=True)
    assert result["changed"] is False
    assert warnings_of(result) == []


def test_diff(sim, run, run_dir):
    sim.create("h100-80gb:2")
    with sim.edit() as data:
        data["gpus"][1]["persistence_mode"] = 1
    result = persist(run, {"state": "enabled"}, run_dir, diff=True, check_mode=True)
    uuid0, uuid1 = sim.gpu(0)["uuid"], sim.gpu(1)["uuid"]
    assert result["diff"] == {
        "before": {"GPU 0 (%s)" % uuid0: "disabled", "GPU 1 (%s)" % uuid1: "enabled"},
        "after": {"GPU 0 (%s)" % uuid0: "enabled", "GPU 1 (%s)" % uuid1: "enabled"},
    }


def test_no_diff_unless_asked(sim, run, run_dir):
    sim.create("h100-80gb:1")
    assert "diff" not in persist(run, {"state": "enabled"}, run_dir)


# -- nvidia-persistenced detection and warnings ------------------------------------------------------------


def test_enable_without_daemon_warns_about_reboot(sim, run, run_dir):
    sim.create("h100-80gb:1")
    result = persist(run, {"state": "enabled"}, run_dir)
    assert len(warnings_of(result)) == 1
    warning = warnings_of(result)[0]
    assert "does not survive a reboot" in warning
    assert "gpuops.nvidia.persistenced" in warning


def test_enable_with_daemon_pid_file_does_not_warn(sim, run, run_dir):
    sim.create("h100-80gb:1")
    with open(os.path.join(run_dir, "nvidia-persistenced.pid"), "w") as handle:
        handle.write("%d\n" % os.getpid())
    result = persist(run, {"state": "enabled"}, run_dir)
    assert result["changed"] is True
    assert warnings_of(result) == []
    assert result["persistenced"] == {"running": True, "pid": os.getpid(), "evidence": "pid_file"}


def test_stale_pid_file_is_not_a_daemon(sim, run, run_dir):
    sim.create("h100-80gb:1")
    child = subprocess.Popen(["true"])
    child.wait()
    with open(os.path.join(run_dir, "nvidia-persistenced.pid"), "w") as handle:
        handle.write("%d\n" % child.pid)
    open(os.path.join(run_dir, "socket"), "w").close()     # a leftover file, nobody listens
    result = persist(run, {"state": "enabled"}, run_dir)
    assert result["persistenced"]["running"] is False
    assert len(warnings_of(result)) == 1


def test_listening_socket_counts_as_daemon():
    short_dir = tempfile.mkdtemp(prefix="nvpd")      # AF_UNIX paths must be short
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(os.path.join(short_dir, "socket"))
        server.listen(1)
        assert _persistence.daemon_status(short_dir) == {"running": True, "pid": None, "evidence": "socket"}
    finally:
        server.close()
        os.unlink(os.path.join(short_dir, "socket"))
        os.rmdir(short_dir)


def test_missing_run_dir_means_no_daemon(tmp_path):
    assert _persistence.daemon_status(str(tmp_path / "absent"))["running"] is False


def test_disable_with_daemon_running_warns(sim, run, run_dir):
    sim.create("h100-80gb:1")
    with sim.edit() as data:
        data["gpus"][0]["persistence_mode"] = 1
    with open(os.path.join(run_dir, "nvidia-persistenced.pid"), "w") as handle:
        handle.write("%d\n" % os.getpid())
    result = persist(run, {"state": "disabled"}, run_dir)
    assert result["changed"] is True
    assert len(warnings_of(result)) == 1
    assert "nvidia-persistenced (pid %d) is running" % os.getpid() in warnings_of(result)[0]


# -- errors -----------------------------------------------------------------------------------------------


def test_unsupported_gpu_fails_naming_it_and_changes_nothing(sim, run, run_dir):
    sim.create("h100-80gb:1,l4:1,h100-80gb:1")
    sim.fault("nvmlDeviceGetPersistenceMode", call=2, code=3)   # GPU 1 answers NOT_SUPPORTED
    result = persist(run, {"state": "enabled"}, run_dir)
    assert result.failed
    assert result["error_kind"] == "not_supported"
    assert "GPU 1 (NVIDIA L4, 00000000:28:00.0)" in result["msg"]
    assert "persistence mode" in result["msg"]
    assert sim.writes() == []
    assert modes(sim) == [0, 0, 0]


def test_unsupported_gpu_fails_in_check_mode_too(sim, run, run_dir):
    sim.create("h100-80gb:2,l4:1")
    sim.fault("nvmlDeviceGetPersistenceMode", call=3, code=3)   # GPU 2 answers NOT_SUPPORTED
    result = persist(run, {"state": "enabled"}, run_dir, check_mode=True)
    assert result.failed and result["error_kind"] == "not_supported"
    assert "GPU 2 (NVIDIA L4, 00000000:38:00.0) does not support this" in result["msg"]
    assert sim.writes() == []


def test_failure_while_writing_names_gpus_already_changed(sim, run, run_dir):
    sim.create("h100-80gb:3")
    sim.fault("nvmlDeviceSetPersistenceMode", call=2, code=15)     # GPU 1 falls off the bus
    result = persist(run, {"state": "enabled"}, run_dir)
    assert result.failed
    assert result["error_kind"] == "gpu_lost"
    assert "GPU 1" in result["msg"]
    assert "already changed before this failure: GPU 0 (%s)" % sim.gpu(0)["uuid"] in result["msg"]
    assert result["changed"] is True
    assert [g["after"] for g in result["gpus"]] == ["enabled", "disabled", "disabled"]


def test_driver_not_loaded(sim, run, run_dir):
    sim.create("h100-80gb:1")
    with sim.edit() as data:
        data["driver_loaded"] = False
    result = persist(run, {"state": "enabled"}, run_dir)
    assert result.failed
    assert result["error_kind"] == "driver_not_loaded"


NON_ROOT_RUNNER = r"""
import json, os, sys
sys.path.insert(0, {simulator!r})
sys.path.insert(0, {collections!r})
import gpuops_nvml_sim
gpuops_nvml_sim.install({state!r})
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_persistence
import ansible.module_utils.basic, ansible.module_utils.common.warnings  # everything main() needs, loaded as root
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
assert os.geteuid() == 65534
sys.argv = ["nvidia_persistence", {args!r}]
nvidia_persistence.main()
"""


def run_as_nobody(sim, args, check_mode=False):
    """Run the module as uid/gid 65534 in a child process, on a state file that user can write.

    The interpreter lives under /root (mode 0700) here, so the child starts as root, imports what it needs
    and drops every uid and gid to 65534 before main() runs; NVML sees a non-root caller throughout main().
    """
    shared = tempfile.mkdtemp(prefix="gpuops-nobody-")
    os.chmod(shared, 0o777)
    state = os.path.join(shared, "state.json")
    with open(sim.path) as source, open(state, "w") as target:
        target.write(source.read())
    open(state + ".lock", "w").close()
    os.chmod(state, 0o666)
    os.chmod(state + ".lock", 0o666)
    args_path = os.path.join(shared, "args.json")
    payload = dict(args)
    payload["_ansible_check_mode"] = check_mode
    payload["persistenced_run_dir"] = os.path.join(shared, "no-daemon")
    with open(args_path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, handle)
    os.chmod(args_path, 0o644)
    code = NON_ROOT_RUNNER.format(simulator=SIMULATOR, collections=COLLECTIONS, state=state, args=args_path)
    env = dict(os.environ, GPUOPS_NVML_SIM_STATE=state, HOME=shared, TMPDIR=shared)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=shared,
                          timeout=60, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, "no JSON from the non-root module run: rc=%s stdout=%r stderr=%r" % (
        proc.returncode, proc.stdout, proc.stderr)
    with open(state) as handle:
        final = json.load(handle)
    return json.loads(lines[-1]), final


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_non_root_enable_fails_with_use_become(sim):
    sim.create("h100-80gb:2")
    result, final = run_as_nobody(sim, {"state": "enabled"})
    assert result.get("failed") is True, result
    assert result["error_kind"] == "no_permission"
    assert "needs root: use become" in result["msg"]
    assert "enable persistence mode" in result["msg"]
    assert [gpu["persistence_mode"] for gpu in final["gpus"]] == [0, 0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_non_root_can_read_and_check(sim):
    sim.create("h100-80gb:2")
    with sim.edit() as data:
        data["gpus"][0]["persistence_mode"] = 1
        data["gpus"][1]["persistence_mode"] = 1
    result = run_as_nobody(sim, {"state": "enabled"})[0]
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    result = run_as_nobody(sim, {"state": "disabled"}, check_mode=True)[0]
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert any("the real run needs become" in str(w) for w in result.get("warnings", [])), result


# -- device selection ---------------------------------------------------------------------------------------


def test_select_by_index_uuid_and_bus_id(sim, run, run_dir):
    sim.create("h100-80gb:4")
    result = persist(run, {"state": "enabled", "devices": ["3", sim.gpu(1)["uuid"], "0000:18:00.0"]}, run_dir)
    assert [g["index"] for g in result["gpus"]] == [0, 1, 3]
    assert modes(sim) == [1, 1, 0, 1]


def test_devices_all_string(sim, run, run_dir):
    sim.create("h100-80gb:2")
    result = persist(run, {"state": "enabled", "devices": "all"}, run_dir)
    assert [g["index"] for g in result["gpus"]] == [0, 1]


def test_device_filter(sim, run, run_dir):
    sim.create("h100-80gb:2,a100-40gb:2")
    result = persist(run, {"state": "enabled", "device_filter": ["0x20B010DE"]}, run_dir)
    assert [g["index"] for g in result["gpus"]] == [2, 3]
    assert modes(sim) == [0, 0, 1, 1]


def test_device_filter_matching_nothing_is_a_no_op(sim, run, run_dir):
    sim.create("h100-80gb:2")
    result = persist(run, {"state": "enabled", "device_filter": ["0x20B010DE"]}, run_dir)
    assert not result.failed
    assert result["changed"] is False and result["gpus"] == []
    assert warnings_of(result) == []


def test_unknown_device(sim, run, run_dir):
    sim.create("h100-80gb:2")
    result = persist(run, {"state": "enabled", "devices": ["7"]}, run_dir)
    assert result.failed
    assert result["error_kind"] == "invalid_selection"
    assert "no GPU with index 7" in result["msg"]
    assert sim.writes() == []


def test_mig_uuid_refused(sim, run, run_dir):
    sim.create("h100-80gb:1")
    result = persist(run, {"state": "enabled", "devices": ["MIG-0b7c4f1e-1111-2222-3333-444455556666"]}, run_dir)
    assert result.failed
    assert "is a MIG device, not a GPU" in result["msg"]


def test_bad_device_filter(sim, run, run_dir):
    sim.create("h100-80gb:1")
    result = persist(run, {"state": "enabled", "device_filter": ["H100"]}, run_dir)
    assert result.failed
    assert result["error_kind"] == "invalid_selection"
