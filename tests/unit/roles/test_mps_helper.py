"""roles/mps/files/gpuops_mps_helper.py (the steps of gpuops-mps@.service) on the simulator and the MPS stand-in."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest

from ansible_collections.gpuops.nvidia.plugins.module_utils._host import process_alive
from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_control import PID_FILE

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.join(HERE, "..", "..", "..", "roles", "mps", "files", "gpuops_mps_helper.py")
STANDINS = os.path.abspath(os.path.join(HERE, "..", "..", "standins"))
CONTROL = os.path.join(STANDINS, "nvidia-cuda-mps-control")


@pytest.fixture
def helper(monkeypatch, tmp_path, sim):
    sim.create("h100-80gb:2")
    monkeypatch.setenv("PATH", STANDINS + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("GPUOPS_MPS_CONFIG_DIR", str(tmp_path / "daemon"))
    monkeypatch.setenv("GPUOPS_NVIDIA_LIB", os.environ.get("PYTHONPATH", "").split(os.pathsep)[0])
    (tmp_path / "daemon").mkdir()
    spec = importlib.util.spec_from_file_location("gpuops_mps_helper", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.tmp = tmp_path
    yield module
    pid_file = tmp_path / "pipe" / PID_FILE
    if pid_file.exists() and process_alive(int(pid_file.read_text())):
        os.kill(int(pid_file.read_text()), 9)


def write(helper, name="gpu1", **settings):
    """The desired state as the role writes it: nvidia_mps options, devices as the user gave them."""
    config = {"state": "started", "pipe_directory": str(helper.tmp / "pipe"), "log_directory": str(helper.tmp / "log"),
              "binary": CONTROL, "timeout": 10, "devices": ["all"], "compute_mode": "keep",
              "_comment": "Ansible managed"}
    config.update(settings)
    (helper.tmp / "daemon" / (name + ".json")).write_text(json.dumps(config))
    for directory in ("pipe", "log"):
        (helper.tmp / directory).mkdir(exist_ok=True)


def step(helper, capsys, *argv, execve=None):
    rc = helper.main(list(argv), **({"execve": execve} if execve else {}))
    out = capsys.readouterr()
    return rc, out.out, out.err


def start(helper, capsys, name="gpu1"):
    """ExecStart: the helper resolves the devices and execs the control; here the exec runs it as a process."""
    launched = {}

    def execve(path, argv, env):
        launched.update(path=path, argv=argv, env=env)
        subprocess.run(argv, env=env, check=True)

    rc, out, err = step(helper, capsys, "start", name, execve=execve)
    return rc, out, err, launched


def test_full_service_cycle_resolves_devices_at_start_and_restores_the_compute_mode(helper, sim, capsys):
    bus = sim.gpu(1)["bus_id"].replace("00000000:", "0000:")
    write(helper, devices=[bus], compute_mode="exclusive_process", default_active_thread_percentage=40,
          default_device_pinned_mem_limit={"0": "4G"}, default_client_priority=1)
    rc, out, err = step(helper, capsys, "pre-start", "gpu1")
    assert rc == 0, err
    assert "set the compute mode of GPU 1" in out and sim.gpu(1)["compute_mode"] == 3 and sim.gpu(0)["compute_mode"] == 0
    rc, out, err, launched = start(helper, capsys)
    assert rc == 0, err
    assert launched["argv"] == [CONTROL, "-d"] and launched["env"]["CUDA_VISIBLE_DEVICES"] == sim.gpu(1)["uuid"]
    assert "for %s" % sim.gpu(1)["uuid"] in out
    rc, out, err = step(helper, capsys, "configure", "gpu1")
    assert rc == 0, err
    assert "set the default active thread percentage from 100.0 to 40" in out
    assert "set the default pinned memory limit of device 0 from 0 to 4G" in out
    rc, out, err = step(helper, capsys, "configure", "gpu1")  # ExecReload with nothing to change
    assert rc == 0 and out == "", out
    rc, out, err = step(helper, capsys, "stop", "gpu1")
    assert rc == 0 and "stopped the MPS control daemon" in out, err
    rc, out, err = step(helper, capsys, "post-stop", "gpu1")
    assert rc == 0 and "restored the compute mode of GPU 1" in out
    assert sim.gpu(1)["compute_mode"] == 0


def test_start_refuses_a_gpu_that_is_gone_with_the_gpus_of_the_node(helper, capsys):
    write(helper, devices=[7])
    rc, _out, err, launched = start(helper, capsys)
    assert rc == 1 and not launched
    assert "no GPU with index 7: GPUs on this host: 0 = " in err and "(invalid_selection)" in err


def test_a_desired_state_with_an_unknown_option_fails_with_what_is_valid(helper, capsys):
    write(helper, pinned_mem_limit={"0": "4G"})
    rc, _out, err = step(helper, capsys, "pre-start", "gpu1")
    assert rc == 1
    assert "unknown option(s) pinned_mem_limit; valid options:" in err and "default_device_pinned_mem_limit" in err


def test_missing_desired_state_and_usage(helper, capsys):
    rc, _out, err = step(helper, capsys, "configure", "nothere")
    assert rc == 1 and "nothere.json" in err
    rc, _out, err = step(helper, capsys, "reboot", "gpu1")
    assert rc == 2 and "usage" in err


def test_pre_start_brings_the_client_environment_up_to_date_after_the_mig_devices_were_recreated(helper, sim, capsys):
    """A per-MIG-device daemon selects its device by placement; after a reboot the layout is recreated with new MIG
    UUIDs, so the start resolves the new one and rewrites CUDA_VISIBLE_DEVICES in the role's client env file."""
    old_uuid = sim.make_mig_device(0)
    (gi_start,) = [gi["start"] for gi in sim.gpu(0)["gpu_instances"]]
    write(helper, name="gpu0-slice%d-1g.10gb" % gi_start, devices=["mig:%s:%d:0" % (sim.gpu(0)["uuid"], gi_start)])
    env_file = helper.tmp / ("gpu0-slice%d-1g.10gb.env" % gi_start)
    header = "# Ansible managed\n# client environment\n"
    env_file.write_text(header + "CUDA_MPS_PIPE_DIRECTORY=%s\nCUDA_VISIBLE_DEVICES=%s\n" % (helper.tmp / "pipe", old_uuid))
    rc, out, err = step(helper, capsys, "pre-start", "gpu0-slice%d-1g.10gb" % gi_start)
    assert rc == 0 and out == "", (out, err)  # nothing recreated yet: the file is left alone
    sim.reboot()
    new_uuid = sim.make_mig_device(0)
    assert new_uuid != old_uuid
    rc, out, err = step(helper, capsys, "pre-start", "gpu0-slice%d-1g.10gb" % gi_start)
    assert rc == 0, err
    assert "set CUDA_VISIBLE_DEVICES=%s in %s" % (new_uuid, env_file) in out
    assert env_file.read_text() == header + "CUDA_MPS_PIPE_DIRECTORY=%s\nCUDA_VISIBLE_DEVICES=%s\n" % (
        helper.tmp / "pipe", new_uuid)
    rc, _out, err, launched = start(helper, capsys, name="gpu0-slice%d-1g.10gb" % gi_start)
    assert rc == 0, err
    assert launched["env"]["CUDA_VISIBLE_DEVICES"] == new_uuid
    step(helper, capsys, "stop", "gpu0-slice%d-1g.10gb" % gi_start)
