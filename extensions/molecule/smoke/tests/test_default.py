"""Smoke verifier: simulated GPUs, facts file, systemd unit, driver stand-ins."""

import json

import pytest

# What molecule.yml puts on each platform (`gpus:`).
EXPECTED_GPUS = {"smoke-debian12": 8, "smoke-debian13": 6}
STATE = "/var/lib/gpuops-nvml-sim/state.json"
PERSISTENCE = ("python3 -c 'import pynvml; pynvml.nvmlInit(); "
               "print(*[pynvml.nvmlDeviceGetPersistenceMode(pynvml.nvmlDeviceGetHandleByIndex(i)) "
               "for i in range(pynvml.nvmlDeviceGetCount())])'")


def expected(host):
    return EXPECTED_GPUS[host.backend.get_hostname()]


def test_systemd_is_running(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded")


def test_facts_file(host):
    facts = host.file("/var/lib/gpuops-smoke/gpus.json")
    assert facts.exists
    gpus = json.loads(facts.content_string)["gpus"]
    assert len(gpus) == expected(host)
    assert len({g["uuid"] for g in gpus}) == len(gpus)


def test_smoke_unit(host):
    unit = host.service("gpuops-smoke.service")
    assert unit.is_enabled
    assert unit.is_running


def test_standins_installed(host):
    for name in ("nvidia-smi", "nvidia-persistenced"):
        f = host.file(f"/usr/bin/{name}")
        assert f.exists and f.mode & 0o111


def test_nvidia_smi_only_reset(host):
    res = host.run("nvidia-smi -L")
    assert res.rc == 2
    assert "supports only" in res.stderr


def test_nvidia_smi_reset(host):
    bus = host.check_output(
        "python3 -c 'import pynvml; pynvml.nvmlInit(); "
        "print(pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).busId)'")
    res = host.run(f"nvidia-smi -r -i {bus}")
    assert res.rc == 0, res.stderr
    assert "successfully reset" in res.stdout


def test_nvidia_smi_reset_refused_while_in_use(host):
    uuid = host.check_output(
        "python3 -c 'import pynvml; pynvml.nvmlInit(); "
        "print(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(1)))'")
    bus = host.check_output(
        "python3 -c 'import pynvml; pynvml.nvmlInit(); "
        "print(pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(1)).busId)'")
    host.check_output(f"python3 -m gpuops_nvml_sim --state {STATE} process add --gpu {uuid} --pid 4242 --name cuda-app")
    try:
        # nvidia-smi exits 255 here, which testinfra's ssh backend would take for an ssh failure
        res = host.run(f"nvidia-smi -r -i {bus} 2>&1; echo rc=$?")
        assert "in use by another process" in res.stdout
        assert res.stdout.strip().splitlines()[-1] == "rc=255"
    finally:
        host.check_output(f"python3 -m gpuops_nvml_sim --state {STATE} process remove --pid 4242")


@pytest.fixture()
def persistenced_user(host):
    host.check_output("id nvpd-test >/dev/null 2>&1 || useradd --system --no-create-home nvpd-test")
    yield "nvpd-test"
    host.run("pkill -TERM -f '^/usr/bin/python3 /usr/bin/nvidia-persistenced' ; sleep 1; "
             "rm -rf /var/run/nvidia-persistenced")


def test_persistenced_lifecycle(host, persistenced_user):
    host.run("rm -rf /var/run/nvidia-persistenced")
    res = host.run(f"nvidia-persistenced --user {persistenced_user} --verbose")
    assert res.rc == 0, res.stderr
    pid = host.file("/var/run/nvidia-persistenced/nvidia-persistenced.pid").content_string.strip()
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == persistenced_user
    assert host.file("/var/run/nvidia-persistenced/socket").is_socket
    modes = host.check_output(PERSISTENCE).split()
    assert modes == ["1"] * expected(host)
    # a second instance cannot take the pid-file lock
    assert host.run(f"nvidia-persistenced --user {persistenced_user}").rc != 0
    host.check_output(f"kill -TERM {pid}")
    host.run("sleep 2")
    modes = host.check_output(PERSISTENCE).split()
    assert modes == ["0"] * expected(host)


def test_persistenced_unknown_user(host):
    res = host.run("nvidia-persistenced --user no-such-user")
    assert res.rc != 0
    assert "no-such-user" in res.stderr


def test_rebooted_by_side_effect(host):
    """side_effect.yml rebooted the node: /run was emptied and the simulator applied its reboot."""
    assert not host.file("/run/gpuops-smoke-marker").exists
    state = json.loads(host.check_output(f"python3 -m gpuops_nvml_sim --state {STATE} show"))
    assert state["boot_id"] >= 2  # created with boot_id 1
