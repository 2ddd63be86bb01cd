"""nvshare scenario verifier: per-GPU schedulers under systemd, live settings, client isolation, removal."""

import json

import pytest

STATE = "/var/lib/gpuops-nvml-sim/state.json"


def gpus(host):
    return json.loads(host.file(STATE).content_string)["gpus"]


def received(host, uuid):
    return json.loads(host.file("/run/nvshare-gpus/%s/standin-state.json" % uuid).content_string)


def main_pid(host, unit):
    return int(host.check_output("systemctl show -p MainPID --value %s" % unit))


@pytest.fixture
def release(host):
    if host.backend.get_hostname() != "nvshare-debian12":
        pytest.skip("release node only")
    return host


@pytest.fixture
def removed(host):
    if host.backend.get_hostname() != "nvshare-debian13":
        pytest.skip("source node only")
    return host


def test_files_are_installed_with_their_modes_and_known_to_the_linker(release):
    for path, mode in (("/usr/local/lib/libnvshare.so", 0o644), ("/usr/local/sbin/nvshare-scheduler", 0o755),
                       ("/usr/local/bin/nvsharectl", 0o755)):
        item = release.file(path)
        assert item.is_file and item.mode == mode and item.user == "root"
    assert "/usr/local/lib/libnvshare.so" in release.check_output("ldconfig -p")


def test_one_scheduler_per_selected_gpu_none_for_the_refused_ones(release):
    node = gpus(release)
    for gpu in node[:2]:
        unit = release.service("nvshare-scheduler@%s.service" % gpu["uuid"])
        assert unit.is_running and unit.is_enabled
        assert release.file("/run/nvshare-gpus/%s/scheduler.sock" % gpu["uuid"]).is_socket
    for gpu in node[2:]:  # MIG mode, MPS daemon
        assert not release.service("nvshare-scheduler@%s.service" % gpu["uuid"]).is_running
        assert not release.file("/run/nvshare-gpus/%s" % gpu["uuid"]).exists


def test_each_scheduler_runs_in_its_own_namespace_for_its_gpu(release):
    for gpu in gpus(release)[:2]:
        pid = main_pid(release, "nvshare-scheduler@%s.service" % gpu["uuid"])
        state = received(release, gpu["uuid"])
        assert state["pid"] == pid and state["cuda_visible_devices"] == gpu["uuid"] and not state["debug"]
        # its /run/nvshare is the GPU's directory
        inner = release.check_output("stat -L -c %%i /proc/%d/root/run/nvshare" % pid)
        assert inner == release.check_output("stat -c %%i /run/nvshare-gpus/%s" % gpu["uuid"])


def test_tq_and_anti_thrash_were_applied_live_and_recorded_for_the_running_pid(release):
    for gpu in gpus(release)[:2]:
        state = received(release, gpu["uuid"])
        assert state["tq"] == 20 and state["anti_thrash"] == "off"
        applied = json.loads(release.file("/run/nvshare-gpus/%s/gpuops-applied.json" % gpu["uuid"]).content_string)
        assert applied["pid"] == state["pid"] and applied["tq"] == 20 and applied["anti_thrash"] == "off"
    desired = json.loads(release.file("/etc/gpuops/nvshare/nvshare.json").content_string)
    assert desired["tq"] == 20 and desired["anti_thrash"] is False and desired["devices"] == [0, "0000:28:00.0"]


def test_clients_reach_only_their_gpus_scheduler(release):
    node = gpus(release)
    pids = sorted(main_pid(release, "nvshare-demo-%s.service" % name) for name in "ab")
    on_gpu0 = [c for c in received(release, node[0]["uuid"])["clients"] if c["connected"]]
    assert sorted(c["pid"] for c in on_gpu0) == pids
    assert all(c["cuda_visible_devices"] == node[0]["uuid"] and c["ld_preload"] == "/usr/local/lib/libnvshare.so"
               for c in on_gpu0)
    # nvshare-demo-b was moved from GPU 1 in side_effect: GPU 1's scheduler has no client left
    assert not [c for c in received(release, node[1]["uuid"])["clients"] if c["connected"]]


def test_client_drop_in(release):
    uuid = gpus(release)[0]["uuid"]
    dropin = release.file("/etc/systemd/system/nvshare-demo-a.service.d/50-gpuops-nvshare.conf").content_string
    assert "Environment=LD_PRELOAD=/usr/local/lib/libnvshare.so" in dropin
    assert "Environment=CUDA_VISIBLE_DEVICES=%s" % uuid in dropin
    assert "BindReadOnlyPaths=/run/nvshare-gpus/%s:/run/nvshare" % uuid in dropin
    assert "After=nvshare-scheduler@%s.service" % uuid in dropin
    assert "NVSHARE_ENABLE_SINGLE_OVERSUB" not in dropin


def test_nvshares_own_path_on_the_host_reaches_the_default_gpu(release):
    uuid = gpus(release)[0]["uuid"]
    assert release.file("/run/nvshare/scheduler.sock").linked_to == "/run/nvshare-gpus/%s/scheduler.sock" % uuid
    out = release.check_output("LD_PRELOAD=/usr/local/lib/libnvshare.so nvshare-client --hold 0")
    client_id = out.split("lock granted to client ")[1].split()[0]
    assert client_id in [c["id"] for c in received(release, uuid)["clients"]]
    tmpfiles = release.file("/etc/tmpfiles.d/gpuops-nvshare.conf").content_string
    assert "L+ /run/nvshare/scheduler.sock - - - - /run/nvshare-gpus/%s/scheduler.sock" % uuid in tmpfiles


def test_the_unit_is_hardened_and_not_preloaded(release):
    unit = release.file("/etc/systemd/system/nvshare-scheduler@.service").content_string
    for line in ("RuntimeDirectory=nvshare-gpus/%i", "BindPaths=/run/nvshare-gpus/%i:/run/nvshare",
                 "ExecStart=/usr/local/sbin/nvshare-scheduler", "Restart=on-failure", "PrivateDevices=yes",
                 "ExecStartPost=/usr/bin/python3 /usr/local/lib/gpuops-nvidia/gpuops_nvshare_helper.py configure %i "
                 "$MAINPID /etc/gpuops/nvshare/nvshare.json", "Environment=CUDA_VISIBLE_DEVICES=%i"):
        assert line in unit
    assert "NVSHARE_DEBUG" not in unit and "# Ansible managed" in unit
    assert not release.file("/etc/ld.so.preload").exists


def test_removal_leaves_nothing_behind(removed):
    for path in ("/etc/systemd/system/nvshare-scheduler@.service", "/etc/tmpfiles.d/gpuops-nvshare.conf",
                 "/etc/gpuops/nvshare", "/run/nvshare", "/run/nvshare-gpus", "/var/cache/gpuops-nvshare",
                 "/usr/local/lib/libnvshare.so", "/usr/local/sbin/nvshare-scheduler", "/usr/local/bin/nvsharectl",
                 "/usr/local/lib/gpuops-nvidia/gpuops_nvshare_helper.py", "/etc/ld.so.preload",
                 "/etc/systemd/system/nvshare-demo-c.service.d"):
        assert not removed.file(path).exists, path
    assert removed.run("systemctl list-unit-files --plain --no-legend 'nvshare-scheduler@*'").stdout.strip() == ""
    # systemd may keep an instance it no longer has a file for in memory for a while: it must be dead
    units = removed.run("systemctl list-units --all --plain --no-legend 'nvshare-scheduler@*'").stdout.strip()
    assert all(line.split()[1:4] == ["not-found", "inactive", "dead"] for line in units.splitlines()), units
    # Anchored at argv[0]: an unanchored `pgrep -f` also counts the shell that runs this very command.
    assert removed.check_output("pgrep -c -f '^[^ ]*nvshare-scheduler' || true") == "0"
    assert "libnvshare" not in removed.check_output("ldconfig -p")


def test_removal_keeps_the_build_tools(removed):
    assert removed.package("gcc").is_installed and removed.package("make").is_installed
