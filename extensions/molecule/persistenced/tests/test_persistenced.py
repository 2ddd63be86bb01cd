"""persistenced role: the daemon runs unprivileged, the unit is repaired, persistence is on."""

import hashlib
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "..", "files")
USER = "nvidia-persistenced"
RUN_DIR = "/var/run/nvidia-persistenced"
DROPIN = "/etc/systemd/system/nvidia-persistenced.service.d/50-gpuops-persistenced.conf"
LOCAL_UNIT = "/etc/systemd/system/nvidia-persistenced.service"
CASES = {
    "persist-masked-d12": "masked",
    "persist-nopm-d13": "no-pm",
    "persist-runfile-d12": "runfile",
    "persist-stale-d13": "stale",
}
VENDOR = {
    "masked": ("/lib/systemd/system/nvidia-persistenced.service", "debian12-nvidia-persistenced.service"),
    "no-pm": ("/usr/lib/systemd/system/nvidia-persistenced.service", "no-persistence-mode.service"),
    "stale": ("/usr/lib/systemd/system/nvidia-persistenced.service", "debian13-nvidia-persistenced.service"),
}
MODES = ("python3 -c 'import json, pynvml; pynvml.nvmlInit(); "
         "print(json.dumps([pynvml.nvmlDeviceGetPersistenceMode(pynvml.nvmlDeviceGetHandleByIndex(i)) "
         "for i in range(pynvml.nvmlDeviceGetCount())]))'")


def case(host):
    return CASES[host.backend.get_hostname()]


def daemon_pid(host):
    return int(host.file(RUN_DIR + "/nvidia-persistenced.pid").content_string.split()[0])


def test_service_enabled_and_running(host):
    service = host.service("nvidia-persistenced")
    assert service.is_enabled
    assert service.is_running


def test_daemon_runs_as_unprivileged_user(host):
    pid = daemon_pid(host)
    user = host.check_output("ps -o user= -p %d" % pid).strip()
    assert user == USER
    uid = int(host.check_output("ps -o uid= -p %d" % pid).strip())
    assert uid != 0
    assert host.file("/proc/%d/exe" % pid).exists


def test_daemon_command_line(host):
    cmdline = host.file("/proc/%d/cmdline" % daemon_pid(host)).content_string.split("\0")
    assert "--user" in cmdline and cmdline[cmdline.index("--user") + 1] == USER
    assert "--persistence-mode" in cmdline
    assert "--no-persistence-mode" not in cmdline
    assert "--verbose" in cmdline


def test_user_has_no_login_shell(host):
    user = host.user(USER)
    assert user.exists
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    assert user.uid < 1000


def test_runtime_directory_belongs_to_the_user(host):
    run_dir = host.file(RUN_DIR)
    assert run_dir.is_directory
    assert run_dir.user == USER
    assert host.file(RUN_DIR + "/socket").is_socket


def test_persistence_enabled_on_every_gpu(host):
    modes = json.loads(host.check_output(MODES))
    assert modes and all(mode == 1 for mode in modes)


def test_unit_not_masked(host):
    assert not host.file("/run/systemd/system/nvidia-persistenced.service").exists
    local = host.file(LOCAL_UNIT)
    assert not (local.is_symlink and local.linked_to == "/dev/null")
    assert host.check_output("systemctl is-enabled nvidia-persistenced.service").strip() == "enabled"


def test_unit_files(host):
    the_case = case(host)
    effective = host.check_output("systemctl cat nvidia-persistenced.service")
    assert "ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced" in effective
    if the_case in VENDOR:
        path, fixture = VENDOR[the_case]
        with open(os.path.join(FILES, fixture), "rb") as handle:
            expected = hashlib.sha256(handle.read()).hexdigest()
        assert host.file(path).sha256sum == expected, "the vendor unit must stay untouched"
        dropin = host.file(DROPIN)
        assert dropin.exists
        assert "ExecStart=\n" in dropin.content_string
        assert "Ansible managed" in dropin.content_string
        assert not host.file(LOCAL_UNIT).exists
    else:
        unit = host.file(LOCAL_UNIT)
        assert unit.is_file and not unit.is_symlink
        assert "Ansible managed" in unit.content_string
        assert "Type=forking" in unit.content_string
        assert not host.file(DROPIN).exists


@pytest.mark.parametrize("name", ["nvidia-persistenced"])
def test_binary_is_the_driver_one(host, name):
    assert host.file("/usr/bin/" + name).mode & 0o111
