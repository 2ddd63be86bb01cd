# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nvidia_mps driven through main() against the NVML simulator and the nvidia-cuda-mps-control stand-in."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import pynvml

from ansible_collections.gpuops.nvidia.plugins.module_utils import _mps_control, _mps_spec
from ansible_collections.gpuops.nvidia.plugins.module_utils._host import process_alive, process_environ
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_control import PID_FILE
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_devices import STATE_FILE
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_mps

STANDINS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "standins"))
CONTROL = os.path.join(STANDINS, "nvidia-cuda-mps-control")


@pytest.fixture
def mps(tmp_path, monkeypatch, sim):
    """Private pipe/log directories, the stand-in first on PATH, and every daemon stopped afterwards."""
    monkeypatch.setenv("PATH", STANDINS + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.delenv("GPUOPS_MPS_STANDIN_FAIL_START", raising=False)
    sim.create("h100-80gb:2")
    dirs = {"pipe_directory": str(tmp_path / "p"), "log_directory": str(tmp_path / "l")}
    yield dirs
    for pipe in [dirs["pipe_directory"]] + [str(p) for p in tmp_path.glob("p*")]:
        pid = _pid(pipe)
        if pid:
            os.kill(pid, signal.SIGKILL)


def _pid(pipe):
    try:
        with open(os.path.join(pipe, PID_FILE)) as handle:
            pid = int(handle.read())
    except (IOError, OSError, ValueError):
        return None
    return pid if process_alive(pid) else None


def _control(dirs, line):
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=dirs["pipe_directory"],
               CUDA_MPS_LOG_DIRECTORY=dirs["log_directory"])
    proc = subprocess.run([CONTROL], input=line + "\n", env=env, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout.strip()


def _environ(pid):
    return process_environ(pid)


def _compute_mode(sim, index=0):
    return sim.gpu(index)["compute_mode"]


def with_changes(base, **changes):
    result = dict(base)
    result.update(changes)
    return result


def args(dirs, **extra):
    result = dict(dirs)
    result.update(extra)
    return result


FULL = dict(devices=["0"], compute_mode="exclusive_process", default_active_thread_percentage=25,
            default_device_pinned_mem_limit={0: "20G"}, default_client_priority=1)


# -- start, idempotence, limits ----------------------------------------------------------------------------

def test_start_configures_and_reports(mps, sim, run):
    result = run(nvidia_mps, args(mps, **FULL))
    assert not result.failed, result
    assert result["changed"] and result["running"] and result["state"] == "started"
    pid = result["pid"]
    assert pid and process_alive(pid)
    assert result["defaults"] == {"active_thread_percentage": 25.0, "device_pinned_mem_limit": {"0": "20G"},
                                  "client_priority": 1}
    gpu = sim.gpu(0)
    assert result["devices"][0]["uuid"] == gpu["uuid"] and result["devices"][0]["type"] == "gpu"
    assert _environ(pid)["CUDA_VISIBLE_DEVICES"] == gpu["uuid"]
    assert _compute_mode(sim, 0) == pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS
    assert _compute_mode(sim, 1) == pynvml.NVML_COMPUTEMODE_DEFAULT
    with open(os.path.join(mps["pipe_directory"], STATE_FILE)) as handle:
        assert json.load(handle)["compute_mode"][gpu["uuid"]]["original"] == 0
    assert sorted(os.listdir(mps["pipe_directory"])) == sorted(
        [STATE_FILE, "control", "control_lock", "control_privileged", "log", PID_FILE])
    assert result["client_environment"]["CUDA_MPS_PIPE_DIRECTORY"] == mps["pipe_directory"]
    assert result["client_environment"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=20G"
    assert _control(mps, "get_default_active_thread_percentage") == (0, "25.0")


def test_second_run_changes_nothing(mps, sim, run):
    first = run(nvidia_mps, args(mps, **FULL))
    second = run(nvidia_mps, args(mps, **FULL))
    assert not second.failed and not second["changed"], second
    assert second["pid"] == first["pid"]
    assert second["actions"] == []


def test_equivalent_memory_limit_is_not_a_change(mps, run):
    run(nvidia_mps, args(mps, default_device_pinned_mem_limit={"0": "2G"}))
    result = run(nvidia_mps, args(mps, default_device_pinned_mem_limit={"0": "2048M"}))
    assert not result["changed"], result


def test_limit_change_applies_without_restart(mps, run):
    first = run(nvidia_mps, args(mps, **FULL))
    changed = with_changes(FULL, default_active_thread_percentage=50, default_device_pinned_mem_limit={0: "8G"})
    result = run(nvidia_mps, args(mps, **changed), diff=True)
    assert result["changed"] and result["pid"] == first["pid"], result
    assert result["defaults"]["active_thread_percentage"] == 50.0
    assert result["defaults"]["device_pinned_mem_limit"] == {"0": "8G"}
    assert result["diff"]["before"]["defaults"]["active_thread_percentage"] == 25.0
    assert result["diff"]["after"]["defaults"]["active_thread_percentage"] == 50.0
    assert not any(action.startswith("start") or action.startswith("stop") for action in result["actions"])


def test_reports_servers_and_clients(mps, run):
    run(nvidia_mps, args(mps))
    client = subprocess.Popen(["sleep", "60"])  # pylint: disable=consider-using-with
    try:
        rc, server = _control(mps, "gpuops_standin_client_add %d" % client.pid)
        assert rc == 0
        result = run(nvidia_mps, args(mps))
        assert not result["changed"]
        assert result["servers"] == [{"pid": int(server), "status": "ACTIVE", "clients": [client.pid],
                                      "active_thread_percentage": 100.0}]
    finally:
        client.kill()
        client.wait()


def test_restarted_gives_a_new_daemon(mps, run):
    first = run(nvidia_mps, args(mps))
    result = run(nvidia_mps, args(mps, state="restarted"))
    assert result["changed"] and result["pid"] != first["pid"]
    assert not process_alive(first["pid"])


def test_device_change_restarts_an_idle_daemon(mps, sim, run):
    first = run(nvidia_mps, args(mps, devices=["0"]))
    result = run(nvidia_mps, args(mps, devices=[sim.gpu(1)["bus_id"]]))
    assert result["changed"] and result["pid"] != first["pid"]
    assert _environ(result["pid"])["CUDA_VISIBLE_DEVICES"] == sim.gpu(1)["uuid"]


def test_device_change_with_clients_is_refused(mps, run):
    first = run(nvidia_mps, args(mps, devices=["0"]))
    client = subprocess.Popen(["sleep", "60"])  # pylint: disable=consider-using-with
    try:
        _control(mps, "gpuops_standin_client_add %d" % client.pid)
        result = run(nvidia_mps, args(mps, devices=["1"]))
        assert result.failed and result["error_kind"] == "restart_needed", result
        assert "1 client(s) are connected" in result["msg"]
        assert process_alive(first["pid"])
    finally:
        client.kill()
        client.wait()


# -- stop ------------------------------------------------------------------------------------------------

def test_stop_leaves_nothing_behind(mps, sim, run):
    started = run(nvidia_mps, args(mps, **FULL))
    result = run(nvidia_mps, args(mps, state="stopped", compute_mode="exclusive_process"))
    assert not result.failed and result["changed"], result
    assert not result["running"]
    assert not process_alive(started["pid"])
    assert _compute_mode(sim, 0) == pynvml.NVML_COMPUTEMODE_DEFAULT
    left = sorted(os.listdir(mps["pipe_directory"]))
    assert left == ["control", "control_lock", "control_privileged"]  # what the real daemon leaves after quit
    assert _control(mps, "get_server_list") == (1, "Cannot find MPS control daemon process")
    again = run(nvidia_mps, args(mps, state="stopped"))
    assert not again["changed"], again


def test_stop_keeps_a_compute_mode_someone_else_changed(mps, sim, run):
    run(nvidia_mps, args(mps, **FULL))
    with sim.edit() as data:
        data["gpus"][0]["compute_mode"] = pynvml.NVML_COMPUTEMODE_PROHIBITED
    result = run(nvidia_mps, args(mps, state="stopped"))
    assert _compute_mode(sim, 0) == pynvml.NVML_COMPUTEMODE_PROHIBITED
    assert any("changed by someone else" in str(w) for w in result.get("warnings", [])), result


def test_stop_after_a_killed_daemon_cleans_up(mps, sim, run):
    started = run(nvidia_mps, args(mps, **FULL))
    os.kill(started["pid"], signal.SIGKILL)
    for _attempt in range(50):
        if not process_alive(started["pid"]):
            break
        time.sleep(0.05)
    result = run(nvidia_mps, args(mps, state="stopped"))
    assert result["changed"]
    assert _compute_mode(sim, 0) == pynvml.NVML_COMPUTEMODE_DEFAULT
    assert PID_FILE not in os.listdir(mps["pipe_directory"])
    assert STATE_FILE not in os.listdir(mps["pipe_directory"])


# -- check mode ------------------------------------------------------------------------------------------

def test_check_mode_start_changes_nothing(mps, sim, run):
    result = run(nvidia_mps, args(mps, **FULL), check_mode=True, diff=True)
    assert result["changed"] and result["running"], result
    assert not os.path.exists(mps["pipe_directory"])
    assert _compute_mode(sim, 0) == pynvml.NVML_COMPUTEMODE_DEFAULT
    assert result["diff"]["before"] == {"running": False}
    assert result["diff"]["after"]["defaults"]["active_thread_percentage"] == 25
    assert any("exclusive_process" in action for action in result["actions"])


def test_check_mode_limit_change_and_stop(mps, sim, run):
    first = run(nvidia_mps, args(mps, **FULL))
    result = run(nvidia_mps, args(mps, **with_changes(FULL, default_client_priority=0)), check_mode=True, diff=True)
    assert result["changed"]
    assert result["diff"]["after"]["defaults"]["client_priority"] == 0
    assert _control(mps, "get_default_client_priority") == (0, "1")
    stop = run(nvidia_mps, args(mps, state="stopped"), check_mode=True)
    assert stop["changed"]
    assert process_alive(first["pid"])
    assert _compute_mode(sim, 0) == pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS


# -- MIG -------------------------------------------------------------------------------------------------

def test_mig_device_daemon(mps, sim, run):
    uuid = sim.make_mig_device(0)
    result = run(nvidia_mps, args(mps, devices=[uuid], default_active_thread_percentage=50))
    assert not result.failed, result
    assert result["devices"] == [{"uuid": uuid, "type": "mig", "index": None, "parent_uuid": sim.gpu(0)["uuid"],
                                  "parent_index": 0}]
    assert _environ(result["pid"])["CUDA_VISIBLE_DEVICES"] == uuid


def test_compute_mode_refused_on_mig(mps, sim, run):
    uuid = sim.make_mig_device(0)
    result = run(nvidia_mps, args(mps, devices=[uuid], compute_mode="exclusive_process"))
    assert result.failed and result["error_kind"] == "mig_mode", result
    assert "compute_mode: keep" in result["msg"]
    result = run(nvidia_mps, args(mps, compute_mode="exclusive_process"))
    assert result.failed and "GPU 0" in result["msg"] and "MIG mode" in result["msg"]
    assert not os.path.exists(mps["pipe_directory"])


def test_whole_gpu_in_mig_mode_is_refused(mps, sim, run):
    sim.make_mig_device(0)
    result = run(nvidia_mps, args(mps, devices=["0"]))
    assert result.failed and "MIG-" in result["msg"], result


# -- errors ----------------------------------------------------------------------------------------------

def test_binary_missing(mps, run, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    from ansible.module_utils.basic import AnsibleModule  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, *a, **k: None)
    result = run(nvidia_mps, args(mps))
    assert result.failed and result["error_kind"] == "binary_missing", result
    assert "nvidia-cuda-mps-control" in result["msg"]
    stopped = run(nvidia_mps, args(mps, state="stopped"))
    assert not stopped.failed and not stopped["changed"]


@pytest.mark.parametrize("value", [0, 101, -5])
def test_bad_percentage(mps, run, value):
    result = run(nvidia_mps, args(mps, default_active_thread_percentage=value))
    assert result.failed and "1 to 100" in result["msg"], result
    assert not os.path.exists(mps["pipe_directory"])


@pytest.mark.parametrize("value", ["20GB", "20", "1.5G", "0G", "lots"])
def test_bad_memory_limit(mps, run, value):
    result = run(nvidia_mps, args(mps, default_device_pinned_mem_limit={0: value}))
    assert result.failed and result["error_kind"] == "invalid_argument" and "512M or 20G" in result["msg"], result


def test_limit_for_a_device_the_daemon_does_not_serve(mps, run):
    result = run(nvidia_mps, args(mps, devices=["0"], default_device_pinned_mem_limit={1: "2G"}))
    assert result.failed and "serves only 1 device" in result["msg"], result


def test_unwritable_pipe_directory(mps, run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(nvidia_mps, args(mps, pipe_directory=str(blocker / "pipe")))
    assert result.failed and result["error_kind"] == "directory", result
    assert str(blocker / "pipe") in result["msg"]


def test_daemon_that_does_not_come_up(mps, sim, run, monkeypatch):
    monkeypatch.setenv("GPUOPS_MPS_STANDIN_FAIL_START", "simulated failure: cannot open /dev/nvidiactl")
    result = run(nvidia_mps, args(mps, timeout=1, **FULL))
    assert result.failed and result["error_kind"] == "start_failed", result
    assert "did not come up" in result["msg"]
    assert any("cannot open /dev/nvidiactl" in line for line in result["log_tail"])
    assert _compute_mode(sim, 0) == pynvml.NVML_COMPUTEMODE_DEFAULT  # restored on failure


def test_bad_device(mps, run):
    result = run(nvidia_mps, args(mps, devices=["7"]))
    assert result.failed and "no GPU with index 7" in result["msg"], result


def test_second_daemon_on_same_pipe_directory_is_refused_by_the_standin(mps, run):
    run(nvidia_mps, args(mps))
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=mps["pipe_directory"], CUDA_MPS_LOG_DIRECTORY=mps["log_directory"])
    proc = subprocess.run([CONTROL, "-d"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "An instance of this daemon is already running" in proc.stdout


# -- reply parsing (rc 0 on errors) ----------------------------------------------------------------------

def _fake_run(replies):
    def run(argv, env=None, data=None):
        return replies[data.strip()]
    return run


def test_unknown_command_with_rc_0_is_an_error():
    control = _mps_control.MpsControl("x", "/p", "/l", _fake_run({"get_default_client_priority": (
        0, 'Unknown command "get_default_client_priority"\n', "")}))
    with pytest.raises(_mps_spec.MpsError) as error:
        control.get_priority()
    assert error.value.kind == "unsupported_command"


def test_server_not_found_with_rc_0_is_an_error():
    control = _mps_control.MpsControl("x", "/p", "/l", _fake_run({
        "get_server_list": (0, "508\n", ""),
        "get_server_status 508": (0, "Server 508 not found\n", ""),
    }))
    assert control.servers() == []  # the server went away between the two commands


def test_no_daemon_is_not_running():
    control = _mps_control.MpsControl("x", "/p", "/l", _fake_run({"get_server_list": (
        1, "Cannot find MPS control daemon process\n", "")}))
    assert control.is_running() is False


def test_memory_limit_parsing():
    assert _mps_spec.parse_memory_limit("20g") == "20G"
    assert _mps_spec.memory_limit_bytes("20G") == _mps_spec.memory_limit_bytes("20480M")
    assert _mps_spec.memory_limit_bytes("0") is None


# -- clients on a multi-GPU node (found on a two-GPU H200: clients without CUDA_VISIBLE_DEVICES failed) ---------

CLIENT = os.path.join(STANDINS, "gpuops-cuda-client")


def _client(environment, *argv):
    """Run the stand-in CUDA client with the node's PATH/simulator plus exactly `environment`."""
    env = {"PATH": os.environ["PATH"], "GPUOPS_NVML_SIM_STATE": os.environ["GPUOPS_NVML_SIM_STATE"],
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    env.update(environment)
    return subprocess.run([sys.executable, CLIENT] + list(argv), env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("selector", ["1", "GPU-UUID-OF-1", "BUS-ID-OF-1"])
def test_client_environment_alone_runs_a_client_on_a_per_gpu_daemon(mps, sim, run, selector):
    gpu1 = sim.gpu(1)
    selector = {"GPU-UUID-OF-1": gpu1["uuid"], "BUS-ID-OF-1": gpu1["bus_id"]}.get(selector, selector)
    started = run(nvidia_mps, args(mps, devices=[selector], default_device_pinned_mem_limit={"0": "4G"}))
    assert not started.failed, started
    env = started["client_environment"]
    assert env["CUDA_VISIBLE_DEVICES"] == gpu1["uuid"]
    ok = _client(env, "--allocate-mib", "1024", "--hold", "3")
    assert ok.returncode == 0 and "client ok" in ok.stdout and gpu1["uuid"] in ok.stdout, ok.stderr


def test_a_client_that_sees_more_gpus_than_the_daemon_serves_fails(mps, sim, run):
    """What the module returned before the fix (no CUDA_VISIBLE_DEVICES): the stand-in fails it like real CUDA."""
    started = run(nvidia_mps, args(mps, devices=["1"]))
    env = dict(started["client_environment"])
    env.pop("CUDA_VISIBLE_DEVICES")
    failed = _client(env)
    assert failed.returncode == 1 and "CUDA initialization failed (device=1, num_gpus=2)" in failed.stderr


def test_clients_of_two_per_gpu_daemons_each_run_and_are_reported(mps, sim, run, tmp_path):
    envs = []
    for index in (0, 1):
        dirs = {"pipe_directory": str(tmp_path / ("p%d" % index)), "log_directory": str(tmp_path / ("l%d" % index))}
        envs.append((dirs, run(nvidia_mps, args(dirs, devices=[str(index)]))["client_environment"]))
    clients = [subprocess.Popen([sys.executable, CLIENT, "--hold", "20"], env=dict(os.environ, **env), stdout=subprocess.PIPE,
                                text=True) for _dirs, env in envs]
    try:
        for (dirs, _env), client in zip(envs, clients):
            assert "client ok" in client.stdout.readline()
            report = run(nvidia_mps, args(dirs, devices=[dirs["pipe_directory"][-1]]))
            assert [client.pid] == [c for s in report["servers"] for c in s["clients"]], report["servers"]
    finally:
        for client in clients:
            client.kill()
            client.wait()


def test_pinned_limit_refuses_an_allocation_over_it(mps, sim, run):
    started = run(nvidia_mps, args(mps, devices=["0"], default_device_pinned_mem_limit={"0": "4G"}))
    over = _client(started["client_environment"], "--allocate-mib", str(6 * 1024))
    assert over.returncode == 2 and "exceeds the pinned memory limit of 4096 MiB" in over.stderr
    under = _client(started["client_environment"], "--allocate-mib", str(2 * 1024))
    assert under.returncode == 0, under.stderr


def test_client_priority_is_in_the_client_environment(mps, run):
    started = run(nvidia_mps, args(mps, devices=["0"], default_client_priority=1, default_active_thread_percentage=25))
    env = started["client_environment"]
    assert env["CUDA_MPS_CLIENT_PRIORITY"] == "1" and env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"


def test_every_gpu_daemon_leaves_cuda_visible_devices_unset(mps, run):
    started = run(nvidia_mps, args(mps))
    assert "CUDA_VISIBLE_DEVICES" not in started["client_environment"]
    assert _client(started["client_environment"]).returncode == 0
