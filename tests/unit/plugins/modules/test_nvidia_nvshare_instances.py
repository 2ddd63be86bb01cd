# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nvidia_nvshare_instances (the nvshare role's preflight) on the NVML simulator, a fake systemd and a fake /proc."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import stat
import textwrap

import pytest

from ansible_collections.gpuops.nvidia.plugins.module_utils import _nvshare_plan
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_nvshare_instances

REAL_NODE = _nvshare_plan.Node

SHA = "sha256:" + "ab" * 32
URL = "https://github.com/grgalex/nvshare/releases/download/v0.1.1/nvshare-v0.1.1.tar.gz"

FAKE_SYSTEMCTL = textwrap.dedent("""\
    #!/usr/bin/env python3
    # systemctl show/list-units over units.json: {unit: {LoadState, ActiveState, MainPID}}
    import fnmatch, json, os, sys
    units = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "units.json")))
    args = sys.argv[1:]
    if args[0] == "show":
        unit = units.get(args[-1], {"LoadState": "not-found", "ActiveState": "inactive", "MainPID": "0"})
        for key in ("LoadState", "ActiveState", "MainPID"):
            print("%s=%s" % (key, unit.get(key, "")))
    elif args[0] == "list-units":
        for name in sorted(units):
            if fnmatch.fnmatch(name, args[-1]):
                print("%s %s %s running x" % (name, units[name]["LoadState"], units[name]["ActiveState"]))
    """)


class FakeNode:
    """Temporary /run/nvshare, /etc/systemd/system, /proc and systemd for the planner."""

    def __init__(self, root):
        self.root = root
        self.socket_dir = str(root / "run" / "nvshare")
        self.gpu_root = str(root / "run" / "nvshare-gpus")
        self.systemd_dir = str(root / "etc" / "systemd" / "system")
        self.proc = str(root / "proc")
        self.bin = root / "bin"
        for path in (self.socket_dir, self.gpu_root, self.systemd_dir, self.proc, str(self.bin)):
            os.makedirs(path)
        os.makedirs(str(root / "var"))
        os.symlink("../run", str(root / "var" / "run"))
        systemctl = self.bin / "systemctl"
        systemctl.write_text(FAKE_SYSTEMCTL)
        systemctl.chmod(systemctl.stat().st_mode | stat.S_IEXEC)
        self.units = {}
        self.glibc = "2.36"
        self.save()

    def save(self):
        (self.bin / "units.json").write_text(json.dumps(self.units))

    def unit(self, name, active="active", pid=0, load="loaded"):
        self.units[name] = {"LoadState": load, "ActiveState": active, "MainPID": str(pid)}
        self.save()

    def process(self, pid, env, bound=None, exe="/usr/local/sbin/nvshare-scheduler"):
        """A fake /proc/<pid>: environ, exe, and a root under which /run/nvshare is `bound` (a host directory)."""
        base = os.path.join(self.proc, str(pid))
        os.makedirs(os.path.dirname(os.path.join(base, "root", self.socket_dir.lstrip("/"))))
        with open(os.path.join(base, "environ"), "wb") as handle:
            handle.write(b"".join(("%s=%s" % kv).encode() + b"\0" for kv in sorted(env.items())))
        os.symlink(exe, os.path.join(base, "exe"))
        target = bound or self.socket_dir
        os.makedirs(target, exist_ok=True)
        os.symlink(target, os.path.join(base, "root", self.socket_dir.lstrip("/")))

    def node(self, run):
        return REAL_NODE(run, socket_dir=self.socket_dir, gpu_root=self.gpu_root, systemd_dir=self.systemd_dir,
                         proc=self.proc, var_run=str(self.root / "var" / "run"), glibc=self.glibc,
                         systemctl=str(self.bin / "systemctl"))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    node = FakeNode(tmp_path / "node")
    monkeypatch.setattr(_nvshare_plan, "Node", node.node)
    node.mps_dir = str(tmp_path / "mps")
    return node


def plan(run, fake, check_mode=True, **params):
    params.setdefault("archive", URL)
    params.setdefault("archive_checksum", SHA)
    params.setdefault("mps_config_dir", fake.mps_dir)
    return run(nvidia_nvshare_instances, params, check_mode=check_mode)


def enable_mig(sim, index):
    with sim.edit() as data:
        data["gpus"][index]["mig_current"] = data["gpus"][index]["mig_pending"] = 1


def test_one_scheduler_per_gpu_named_by_uuid_with_its_own_directory(sim, run, fake):
    sim.create("h100-80gb:4")
    result = plan(run, fake)
    assert not result.failed, result
    assert [s["gpu"]["index"] for s in result["schedulers"]] == [0, 1, 2, 3]
    for index, scheduler in enumerate(result["schedulers"]):
        uuid = sim.gpu(index)["uuid"]
        assert scheduler["instance"] == uuid and scheduler["unit"] == "nvshare-scheduler@%s.service" % uuid
        assert scheduler["directory"] == os.path.join(fake.gpu_root, uuid)
        assert scheduler["socket"] == os.path.join(fake.gpu_root, uuid, "scheduler.sock")
        assert scheduler["environment"] == {"CUDA_VISIBLE_DEVICES": uuid}
        assert scheduler["bind"] == {"source": "/run/nvshare-gpus/" + uuid, "target": "/run/nvshare"}  # the unit's
        assert not scheduler["running"] and not scheduler["configure_needed"] and not scheduler["restart_needed"]
    assert result["default_device"] == sim.gpu(0)["uuid"] and result["schedulers"][0]["default"]
    assert not result["changed"] and not result["stale_schedulers"]
    assert result["config"]["tq"] == 30 and result["config"]["anti_thrash"] is True


def test_gpus_and_clients_by_bus_id_uuid_and_index(sim, run, fake):
    sim.create("h100-80gb:3")
    fake.unit("jupyterhub.service", active="inactive")
    fake.unit("slurmd.service", active="inactive")
    bus1, uuid2 = sim.gpu(1)["bus_id"], sim.gpu(2)["uuid"]
    result = plan(run, fake, devices=[bus1.replace("00000000:", "0000:").lower(), uuid2], default_device=uuid2,
                  debug=True, single_oversub=True,
                  clients=[{"service": "jupyterhub", "device": bus1[-7:]},
                           {"service": "slurmd.service", "single_oversub": False}])
    assert not result.failed, result
    assert [s["gpu"]["index"] for s in result["schedulers"]] == [1, 2]
    assert result["default_device"] == uuid2
    assert result["schedulers"][0]["environment"] == {"CUDA_VISIBLE_DEVICES": sim.gpu(1)["uuid"], "NVSHARE_DEBUG": "1"}
    hub, slurm = result["clients"]
    assert hub["service"] == "jupyterhub.service" and hub["instance"] == sim.gpu(1)["uuid"]
    assert hub["environment"] == {"LD_PRELOAD": "/usr/local/lib/libnvshare.so",
                                  "CUDA_VISIBLE_DEVICES": sim.gpu(1)["uuid"], "NVSHARE_ENABLE_SINGLE_OVERSUB": "1"}
    assert hub["bind"] == {"source": "/run/nvshare-gpus/" + sim.gpu(1)["uuid"], "target": "/run/nvshare"}
    assert hub["unit"] == "nvshare-scheduler@%s.service" % sim.gpu(1)["uuid"]
    assert slurm["instance"] == uuid2 and "NVSHARE_ENABLE_SINGLE_OVERSUB" not in slurm["environment"]
    assert result["schedulers"][0]["clients"] == ["jupyterhub.service"]
    assert result["schedulers"][1]["clients"] == ["slurmd.service"]
    assert result["config"]["devices"] == [bus1.replace("00000000:", "0000:").lower(), uuid2]  # written as given


def test_a_gpu_in_mig_mode_is_refused_with_the_gpus_that_can_be_taken(sim, run, fake):
    sim.create("h100-80gb:3")
    enable_mig(sim, 1)
    result = plan(run, fake)
    assert result.failed and result["error_kind"] == "invalid_selection", result
    assert "GPU 1 (NVIDIA H100 80GB HBM3" in result["msg"] and "is in MIG mode" in result["msg"]
    assert "GPUs nvshare can take here: 0, 2" in result["msg"] and "nothing was changed" in result["msg"]
    allowed = plan(run, fake, allow_mig=True)
    assert not allowed.failed and len(allowed["schedulers"]) == 3
    assert any("is in MIG mode (allow_mig)" in w for w in map(str, allowed.get("warnings", [])))
    assert not plan(run, fake, devices=[0, 2]).failed


def test_a_gpu_served_by_an_mps_daemon_of_the_mps_role_is_refused(sim, run, fake):
    sim.create("h100-80gb:3")
    os.makedirs(os.path.join(fake.mps_dir, "daemon"))
    with open(os.path.join(fake.mps_dir, "daemon", "train.json"), "w") as handle:
        json.dump({"state": "started", "devices": [sim.gpu(2)["bus_id"]], "compute_mode": "exclusive_process"}, handle)
    result = plan(run, fake)
    assert result.failed, result
    assert "GPU 2 (NVIDIA H100 80GB HBM3" in result["msg"] and "served by MPS daemon train" in result["msg"]
    assert "train.json" in result["msg"] and "GPUs nvshare can take here: 0, 1" in result["msg"]
    assert "GPU 0" not in result["msg"].split("GPUs nvshare")[0]
    assert not plan(run, fake, devices=[0, 1]).failed
    assert not plan(run, fake, allow_mps=True).failed
    with open(os.path.join(fake.mps_dir, "daemon", "all.json"), "w") as handle:
        json.dump({"state": "started"}, handle)  # no devices: every GPU
    everything = plan(run, fake, devices=[0, 1])
    assert everything.failed and "served by MPS daemon all" in everything["msg"]
    assert "none of those selected" in everything["msg"]
    with open(os.path.join(fake.mps_dir, "daemon", "all.json"), "w") as handle:
        json.dump({"devices": [7]}, handle)
    broken = plan(run, fake, devices=[0])
    assert broken.failed and "cannot tell which GPUs MPS daemon all" in broken["msg"] and "no GPU with index 7" in \
        broken["msg"]


def test_every_problem_is_reported_at_once_with_what_is_valid(sim, run, fake):
    sim.create("h100-80gb:2")
    fake.unit("jupyterhub.service", active="inactive")
    result = plan(run, fake, tq=0, archive_checksum="md5:abc",
                  clients=[{"service": "jupyterhub", "device": 9}, {"service": "ghost"},
                           {"service": "x", "gpu": 0}, {"service": "nvshare-scheduler@GPU-1"},
                           {"service": "a b"}, {"service": "jupyterhub.service"}])
    assert result.failed and result["error_kind"] == "invalid_argument", result
    msg = result["msg"]
    assert "tq must be a whole number of seconds from 1 to 86400" in msg
    assert "archive_checksum must be sha256:<64 hex digits>, got 'md5:abc'" in msg
    assert "client x: unknown option(s) gpu; valid options: device, restart, service, single_oversub" in msg
    assert "nvshare-scheduler@GPU-1.service is a unit of this collection" in msg
    assert "client a b: service must be a systemd service name" in msg
    assert "jupyterhub.service is listed twice" in msg
    assert msg.endswith("(nothing was changed)")


def test_node_checks_after_the_options_are_valid(sim, run, fake):
    sim.create("h100-80gb:2")
    fake.unit("jupyterhub.service", active="inactive")
    result = plan(run, fake, clients=[{"service": "jupyterhub", "device": 9}, {"service": "ghost"}],
                  default_device="GPU-00000000-0000-0000-0000-000000000000")
    assert result.failed, result
    assert "client jupyterhub.service: no GPU with index 9: GPUs on this host: 0 = NVIDIA H100" in result["msg"]
    assert "client ghost.service does not exist on this node (systemd: not-found)" in result["msg"]
    assert "default_device: no GPU with UUID GPU-00000000" in result["msg"]
    fake.unit("ghost.service", active="inactive")
    narrow = plan(run, fake, devices=[0], clients=[{"service": "ghost", "device": 1}])
    assert narrow.failed and "client ghost.service: GPU 1 (" in narrow["msg"]
    assert "gets no nvshare scheduler (devices selects GPU 0)" in narrow["msg"]


@pytest.mark.parametrize("params, expected", [
    ({"archive": "nvshare.tar.gz"}, "neither a URL (https://, http://, ftp://) nor an absolute path"),
    ({"archive": None}, "archive is required"),
    ({"archive_checksum": None}, "archive_checksum is required for https://"),
    ({"archive": "/srv/nvshare.tgz", "archive_facts": {"exists": False}}, "/srv/nvshare.tgz does not exist on the"),
    ({"archive": "/srv/nvshare.tgz", "archive_facts": {"exists": True, "isdir": False, "checksum": "cd" * 32}},
     "the file is sha256:" + "cd" * 32 + ", archive_checksum says " + SHA),
    ({"archive": "/srv/nvshare", "archive_facts": {"exists": True, "isdir": True}, "archive_checksum": None},
     "file_checksums must give sha256:<64 hex digits> for each of libnvshare.so, nvshare-scheduler, nvsharectl"),
    ({"archive": "/srv/nvshare", "install_method": "source", "archive_facts": {"exists": True, "isdir": True}},
     "install_method source builds from a source tarball"),
    ({"file_checksums": {"nvsharectl": SHA}}, "file_checksums is for an archive that is a directory"),
    ({"release_min_glibc": "two"}, "release_min_glibc must be a glibc version such as 2.34"),
])
def test_installation_sources_are_checked_before_anything_is_downloaded(sim, run, fake, params, expected):
    sim.create("h100-80gb:1")
    result = plan(run, fake, **params)
    assert result.failed and expected in result["msg"], result


def test_a_directory_of_built_files_with_their_checksums(sim, run, fake):
    sim.create("h100-80gb:1")
    checksums = {"libnvshare.so": SHA, "nvshare-scheduler": SHA, "nvsharectl": "sha256:" + "0f" * 32}
    facts = {"exists": True, "isdir": True, "files": {
        "libnvshare.so": {"exists": True, "checksum": "ab" * 32},
        "nvshare-scheduler": {"exists": False},
        "nvsharectl": {"exists": True, "checksum": "ab" * 32}}}
    result = plan(run, fake, archive="/srv/nvshare", archive_checksum=None, file_checksums=checksums,
                  archive_facts=facts)
    assert result.failed
    assert "/srv/nvshare has no nvshare-scheduler" in result["msg"]
    assert "/srv/nvshare/nvsharectl does not match file_checksums[nvsharectl]" in result["msg"]
    facts["files"]["nvshare-scheduler"] = {"exists": True, "checksum": "ab" * 32}
    checksums["nvsharectl"] = SHA
    good = plan(run, fake, archive="/srv/nvshare", archive_checksum=None, file_checksums=checksums, archive_facts=facts)
    assert not good.failed, good
    install = good["install"]
    assert install["kind"] == "directory" and install["download"] is None and install["checksum"] is None
    assert install["files"]["nvshare-scheduler"] == {"path": "/usr/local/sbin/nvshare-scheduler", "mode": "0755"}
    assert install["files"]["libnvshare.so"] == {"path": "/usr/local/lib/libnvshare.so", "mode": "0644"}


def test_release_binaries_need_a_recent_glibc_else_build_on_the_node(sim, run, fake):
    sim.create("h100-80gb:1")
    fake.glibc = "2.31"
    result = plan(run, fake)
    assert result.failed
    assert "this node's glibc is 2.31, older than the 2.34 that the release binaries need" in result["msg"]
    assert "install_method source" in result["msg"]
    built = plan(run, fake, install_method="source", archive="/srv/nvshare-src.tar.gz",
                 archive_facts={"exists": True, "isdir": False, "checksum": "ab" * 32})
    assert not built.failed, built
    install = built["install"]
    assert install["kind"] == "file" and install["method"] == "source"
    assert install["download"] == "/var/cache/gpuops-nvshare/nvshare-src.tar.gz"
    assert install["staging"] == "/var/cache/gpuops-nvshare/" + "ab" * 8
    assert install["build_dir"] == install["staging"] + "/src" and install["glibc"] == "2.31"
    assert not plan(run, fake, release_min_glibc="2.30").failed


def test_var_run_must_be_run(sim, run, fake):
    sim.create("h100-80gb:1")
    os.remove(str(fake.root / "var" / "run"))
    os.makedirs(str(fake.root / "var" / "run"))
    result = plan(run, fake)
    assert result.failed and "nvshare's compiled-in /var/run/nvshare must be the" in result["msg"]


def applied(fake, uuid, **record):
    directory = os.path.join(fake.gpu_root, uuid)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "gpuops-applied.json"), "w") as handle:
        json.dump(record, handle)


def test_a_running_scheduler_is_left_alone_when_its_settings_were_applied_to_its_pid(sim, run, fake):
    sim.create("h100-80gb:2")
    uuid = sim.gpu(0)["uuid"]
    fake.unit("nvshare-scheduler@%s.service" % uuid, pid=4001)
    fake.process(4001, {"CUDA_VISIBLE_DEVICES": uuid}, bound=os.path.join(fake.gpu_root, uuid))
    applied(fake, uuid, pid=4001, tq=45, anti_thrash="off", applied_at=1)
    result = plan(run, fake, tq=45, anti_thrash=False)
    first = result["schedulers"][0]
    assert first["running"] and first["pid"] == 4001 and first["applied"]["tq"] == 45
    assert not first["configure_needed"] and not first["restart_needed"] and first["drift"] == []
    assert not result["schedulers"][1]["running"]
    again = plan(run, fake, tq=60, anti_thrash=False)["schedulers"][0]
    assert again["configure_needed"] and not again["restart_needed"]  # applied live, no restart
    applied(fake, uuid, pid=3999, tq=45, anti_thrash="off", applied_at=1)  # systemd restarted it, record is old
    assert plan(run, fake, tq=45, anti_thrash=False)["schedulers"][0]["configure_needed"]


def test_start_time_drift_needs_a_restart(sim, run, fake):
    sim.create("h100-80gb:2")
    uuid0, uuid1 = sim.gpu(0)["uuid"], sim.gpu(1)["uuid"]
    fake.unit("nvshare-scheduler@%s.service" % uuid0, pid=4001)
    os.makedirs(os.path.join(fake.gpu_root, uuid0))
    fake.process(4001, {"CUDA_VISIBLE_DEVICES": uuid0}, bound=os.path.join(fake.gpu_root, uuid1),
                 exe="/usr/local/sbin/nvshare-scheduler (deleted)")
    result = plan(run, fake, debug=True)
    first = result["schedulers"][0]
    assert first["restart_needed"] and not first["configure_needed"], first
    assert "debug logging is off" in first["drift"] and "its binary was replaced on disk" in first["drift"]
    assert any("its /run/nvshare is not" in d for d in first["drift"])


def test_client_services_running_without_their_wiring_are_reported(sim, run, fake):
    sim.create("h100-80gb:2")
    uuid1 = sim.gpu(1)["uuid"]
    fake.unit("jupyterhub.service", pid=5001)
    fake.process(5001, {"PATH": "/usr/bin"})
    fake.unit("slurmd.service", pid=5002)
    fake.process(5002, {"LD_PRELOAD": "/usr/local/lib/libnvshare.so", "CUDA_VISIBLE_DEVICES": uuid1},
                 bound=os.path.join(fake.gpu_root, uuid1))
    result = plan(run, fake, clients=[{"service": "jupyterhub", "device": 1},
                                      {"service": "slurmd", "device": 1, "restart": True}])
    hub, slurm = result["clients"]
    assert hub["active"] and hub["restart_needed"] and "LD_PRELOAD is None" in " ".join(hub["drift"])
    assert not slurm["restart_needed"] and slurm["drift"] == []
    assert any("jupyterhub.service (pid 5001) runs without its nvshare wiring for GPU 1" in w
               for w in map(str, result.get("warnings", [])))
    moved = plan(run, fake, clients=[{"service": "slurmd", "device": 0, "restart": True}])
    (slurm,) = moved["clients"]
    assert slurm["restart_needed"] and any("/run/nvshare is not bound to" in d for d in slurm["drift"])
    assert not any("slurmd" in w for w in map(str, moved.get("warnings", [])))  # restart: true, the role restarts it


def test_what_is_no_longer_wanted_is_listed_for_removal(sim, run, fake):
    sim.create("h100-80gb:2")
    uuid0, uuid1 = sim.gpu(0)["uuid"], sim.gpu(1)["uuid"]
    wants = os.path.join(fake.systemd_dir, "multi-user.target.wants")
    os.makedirs(wants)
    os.symlink("/etc/systemd/system/nvshare-scheduler@.service",
               os.path.join(wants, "nvshare-scheduler@%s.service" % uuid1))
    os.makedirs(os.path.join(fake.gpu_root, "GPU-0badc0de-0000-0000-0000-000000000000"))
    for service in ("jupyterhub.service", "old.service"):
        os.makedirs(os.path.join(fake.systemd_dir, service + ".d"))
        with open(os.path.join(fake.systemd_dir, service + ".d", "50-gpuops-nvshare.conf"), "w") as handle:
            handle.write("[Service]\n")
    fake.unit("jupyterhub.service", active="inactive")
    fake.unit("old.service", pid=6001)
    fake.process(6001, {"LD_PRELOAD": "/usr/local/lib/libnvshare.so"})
    result = plan(run, fake, devices=[0], clients=[{"service": "jupyterhub"}])
    assert result["stale_schedulers"] == sorted([uuid1, "GPU-0badc0de-0000-0000-0000-000000000000"])
    assert [c["service"] for c in result["stale_clients"]] == ["old.service"]
    assert result["clients"][0]["instance"] == uuid0
    assert any("old.service still runs with libnvshare.so (pid 6001)" in w for w in map(str, result.get("warnings", [])))


def test_absent_lists_everything_and_needs_no_gpu(run, fake):
    os.makedirs(os.path.join(fake.gpu_root, "GPU-0badc0de-0000-0000-0000-000000000000"))
    fake.unit("nvshare-scheduler@GPU-11111111-0000-0000-0000-000000000000.service", active="failed")
    result = plan(run, fake, state="absent", archive=None, archive_checksum=None)
    assert not result.failed, result
    assert result["stale_schedulers"] == ["GPU-0badc0de-0000-0000-0000-000000000000",
                                          "GPU-11111111-0000-0000-0000-000000000000"]
    assert result["schedulers"] == [] and result["install"] is None


def test_warnings_for_a_short_tq_ld_so_preload_on_several_gpus_and_no_gpu_selected(sim, run, fake):
    sim.create("h100-80gb:2")
    result = plan(run, fake, tq=5, ld_so_preload=True, default_device=1)
    assert not result.failed, result
    assert any("tq is 5 s: nvshare advises at least 10" in w for w in map(str, result.get("warnings", [])))
    assert any("ld_so_preload: every process on the node loads libnvshare.so" in w and "GPU 1's" in w
               for w in map(str, result.get("warnings", [])))
    none = plan(run, fake, device_filter=["0x20B010DE"])
    assert not none.failed and none["schedulers"] == []
    assert any("select no GPU on this node" in w for w in map(str, none.get("warnings", [])))
    fake.unit("jupyterhub.service", active="inactive")
    needs = plan(run, fake, device_filter=["0x20B010DE"], clients=[{"service": "jupyterhub"}])
    assert needs.failed and "need a GPU with an nvshare scheduler" in needs["msg"]


def test_without_systemd_units_are_not_queried(sim, run, fake, monkeypatch):
    """The hardware evidence runs the planner in a container without systemd: nothing is running, nothing fails."""
    sim.create("h100-80gb:1")
    monkeypatch.setattr(_nvshare_plan, "Node", lambda run: REAL_NODE(
        run, socket_dir=fake.socket_dir, gpu_root=fake.gpu_root, systemd_dir=fake.systemd_dir, var_run=str(fake.root / "var" / "run"),
        systemctl=""))
    result = plan(run, fake, clients=[{"service": "anything"}])
    assert not result.failed, result
    assert not result["schedulers"][0]["running"] and not result["clients"][0]["active"]
