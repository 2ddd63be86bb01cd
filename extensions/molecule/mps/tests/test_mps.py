"""MPS scenario verifier: named and per-MIG-device daemons under systemd, defaults, files, removal."""

import json

STATE = "/var/lib/gpuops-nvml-sim/state.json"


def control(host, instance, command):
    return host.run("echo %s | CUDA_MPS_PIPE_DIRECTORY=/run/nvidia-mps/%s nvidia-cuda-mps-control" % (command, instance))


def mig_devices(host):
    """[(the per-MIG-device daemon's name, the MIG UUID)] of GPU 1's MIG devices."""
    state = json.loads(host.file(STATE).content_string)
    return [("gpu1-slice%d-1g.10gb" % gi["start"], ci["uuid"])
            for gi in state["gpus"][1]["gpu_instances"] for ci in gi["compute_instances"]]


def test_shared_instance_runs_with_its_defaults(host):
    unit = host.service("gpuops-mps@shared.service")
    assert unit.is_enabled and unit.is_running
    assert control(host, "shared", "get_default_active_thread_percentage").stdout.strip() == "25.0"
    assert control(host, "shared", "'get_default_device_pinned_mem_limit 0'").stdout.strip() == "20G"
    assert control(host, "shared", "get_default_client_priority").stdout.strip() == "1"


def test_shared_instance_serves_gpu0_in_exclusive_process(host):
    state = json.loads(host.file(STATE).content_string)
    pid = host.run("systemctl show -p MainPID --value gpuops-mps@shared.service").stdout.strip()
    environ = host.file("/proc/%s/environ" % pid).content.split(b"\0")
    assert ("CUDA_VISIBLE_DEVICES=%s" % state["gpus"][0]["uuid"]).encode() in environ
    assert state["gpus"][0]["compute_mode"] == 3
    assert state["gpus"][1]["compute_mode"] == 0  # MIG GPU left alone


def test_pipe_and_log_directories(host):
    pipe = host.file("/run/nvidia-mps/shared")
    assert pipe.is_directory and pipe.mode == 0o755
    assert host.file("/run/nvidia-mps/shared/control").is_socket
    assert host.file("/var/log/nvidia-mps/shared/control.log").exists


def test_client_environment_file(host):
    state = json.loads(host.file(STATE).content_string)
    env = host.file("/etc/gpuops/mps/shared.env").content_string
    assert "CUDA_MPS_PIPE_DIRECTORY=/run/nvidia-mps/shared" in env
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20G" in env
    assert "CUDA_VISIBLE_DEVICES=%s" % state["gpus"][0]["uuid"] in env
    assert "CUDA_MPS_CLIENT_PRIORITY=1" in env


def client(host, instance, *argv):
    """The stand-in CUDA client with nothing but the role's client environment file (env -i)."""
    return host.run("set -a; . /etc/gpuops/mps/%s.env; set +a; exec env -i PATH=/usr/bin:/bin "
                    "$(grep -v '^#' /etc/gpuops/mps/%s.env | xargs) gpuops-cuda-client %s"
                    % (instance, instance, " ".join(argv)))


def test_a_client_runs_with_only_the_env_file_on_a_two_gpu_node(host):
    ok = client(host, "shared", "--allocate-mib", "1024")
    assert ok.rc == 0 and "client ok" in ok.stdout, ok.stderr
    refused = client(host, "shared", "--allocate-mib", str(21 * 1024))
    assert refused.rc == 2 and "pinned memory limit" in refused.stderr


def test_each_mig_device_daemon_serves_its_client(host):
    for name, uuid in mig_devices(host):
        ok = client(host, name)
        assert ok.rc == 0 and uuid in ok.stdout, ok.stderr


def test_an_instance_selected_by_pci_bus_id_resolves_on_the_node(host):
    state = json.loads(host.file(STATE).content_string)
    desired = json.loads(host.file("/etc/gpuops/mps/daemon/bybus.json").content_string)
    assert desired["devices"] == ["0000:38:00.0"]  # written as given, resolved on the node at every start
    assert state["gpus"][2]["bus_id"] == "00000000:38:00.0"
    assert "CUDA_VISIBLE_DEVICES=%s" % state["gpus"][2]["uuid"] in host.file("/etc/gpuops/mps/bybus.env").content_string
    assert host.service("gpuops-mps@bybus.service").is_running
    assert client(host, "bybus").rc == 0


def test_one_daemon_per_mig_device(host):
    """Named by where the MIG device sits (its UUID changes whenever the instance is re-created)."""
    devices = mig_devices(host)
    assert len(devices) == 2
    for name, uuid in devices:
        assert host.service("gpuops-mps@%s.service" % name).is_running
        assert control(host, name, "get_server_list").rc == 0
        assert "CUDA_VISIBLE_DEVICES=%s\n" % uuid in host.file("/etc/gpuops/mps/%s.env" % name).content_string


def test_removed_instance_is_gone(host):
    assert not host.service("gpuops-mps@extra.service").is_running
    assert not host.file("/etc/gpuops/mps/extra.env").exists
    assert not host.file("/etc/gpuops/mps/daemon/extra.json").exists
    assert not host.file("/etc/systemd/system/gpuops-mps@extra.service.d").exists
    assert not host.file("/run/nvidia-mps/extra").exists


def test_daemon_count(host):
    # shared + bybus + 2 MIG devices, each with a live control daemon behind its pid file
    units = host.run("systemctl list-units --no-legend --plain --state=active 'gpuops-mps@*'").stdout.split("\n")
    assert len([u for u in units if u.strip()]) == 4
    pids = host.run("for f in /run/nvidia-mps/*/nvidia-cuda-mps-control.pid; do cat $f; echo; done").stdout.split()
    assert len(pids) == 4 and all(host.file("/proc/%s" % pid).is_directory for pid in pids)
