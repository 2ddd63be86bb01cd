"""mig scenario verifier: after the side effect's reboot, gpuops-mig-apply.service put the layout back."""

import json

import pytest

STATE = "/var/lib/gpuops-nvml-sim/state.json"
UNIT = "gpuops-mig-apply.service"
# Read the layout with pynvml only (not the engine under test): MIG mode, and per MIG device its GPU
# instance's placement and memory.
READ_LAYOUT = r"""python3 - <<'EOF'
import json, pynvml
pynvml.nvmlInit()
out = []
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    try:
        current, pending = pynvml.nvmlDeviceGetMigMode(h)
    except pynvml.NVMLError:
        out.append({"index": i, "mig": None, "devices": []})
        continue
    devices = []
    for m in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h) if current else 0):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, m)
        except pynvml.NVMLError:
            continue
        info = pynvml.nvmlGpuInstanceGetInfo(pynvml.nvmlDeviceGetGpuInstanceById(h, pynvml.nvmlDeviceGetGpuInstanceId(mig)))
        devices.append({"start": info.placement.start, "size": info.placement.size,
                        "memory_gib": round(pynvml.nvmlDeviceGetMemoryInfo(mig).total / 2**30)})
    out.append({"index": i, "name": pynvml.nvmlDeviceGetName(h), "mig": current, "pending": pending,
                "devices": sorted(devices, key=lambda d: d["start"])})
print(json.dumps(out))
EOF"""


@pytest.fixture(scope="module")
def layout(host):
    return json.loads(host.check_output(READ_LAYOUT))


def test_node_was_rebooted(host):
    state = json.loads(host.check_output(f"python3 -m gpuops_nvml_sim --state {STATE} show"))
    assert state["boot_id"] >= 2  # created with boot_id 1; the side effect rebooted it


def test_engine_and_script_installed(host):
    lib = "/usr/local/lib/gpuops-nvidia/ansible_collections/gpuops/nvidia/plugins/module_utils"
    # the engine role copies every plugins/module_utils/_*.py but the Ansible adapter _module.py
    for name in ("__init__.py", "_contract.py", "_nvml.py", "_gpu_info.py", "_mig.py", "_mig_plan.py",
                 "_mig_config.py", "_mps.py"):
        assert host.file(f"{lib}/{name}").is_file, name
        assert host.file(f"{lib}/{name}").user == "root" and host.file(f"{lib}/{name}").mode == 0o644
    assert not host.file(f"{lib}/_module.py").exists
    for package in ("ansible_collections", "ansible_collections/gpuops", "ansible_collections/gpuops/nvidia",
                    "ansible_collections/gpuops/nvidia/plugins"):
        assert host.file(f"/usr/local/lib/gpuops-nvidia/{package}/__init__.py").is_file
    script = host.file("/usr/local/sbin/gpuops-mig-apply")
    assert script.mode == 0o755
    assert script.content_string.startswith("#!/usr/bin/python3\n")


def test_desired_state_is_the_modules_options(host):
    """The side effect switched to config all-3g of a mig-parted file: mig.json holds the module's options as
    the role passed them, plus the parsed config (the node's copy of the file was removed before the reboot)."""
    desired = json.loads(host.file("/etc/gpuops/mig.json").content_string)
    assert sorted(desired) == ["_mig_parted_config", "allow_busy_kept_instances", "config_file", "config_name",
                               "device_filter", "devices", "layout", "lock_file", "lock_timeout", "mode", "reset"]
    assert desired["config_file"] == "/etc/gpuops/mig-parted.yaml" and desired["config_name"] == "all-3g"
    assert desired["mode"] is None and desired["layout"] is None
    assert desired["_mig_parted_config"]["mig-configs"]["all-3g"][0]["mig-devices"] == {"3g.40gb": 2}
    assert not host.file("/etc/gpuops/mig-parted.yaml").exists


def test_unit_ordering(host):
    show = host.check_output(f"systemctl show {UNIT} -p After -p Before -p WantedBy -p Type -p RemainAfterExit")
    props = dict(line.split("=", 1) for line in show.splitlines())
    assert props["Type"] == "oneshot"
    assert props["RemainAfterExit"] == "yes"
    assert {"nvidia-persistenced.service", "nvidia-fabricmanager.service"} <= set(props["After"].split())
    assert "nvidia-gpu-reset.target" in props["Before"].split()
    assert "multi-user.target" in props["WantedBy"].split()


def test_service_ran_successfully_at_boot(host):
    unit = host.service(UNIT)
    assert unit.is_enabled
    show = host.check_output(f"systemctl show {UNIT} -p ActiveState -p SubState -p Result -p ExecMainStatus")
    props = dict(line.split("=", 1) for line in show.splitlines())
    assert props == {"ActiveState": "active", "SubState": "exited", "Result": "success", "ExecMainStatus": "0"}


def test_service_logged_the_plan(host):
    log = host.check_output(f"journalctl -b -u {UNIT} --no-pager -o cat")
    assert "desired state from /etc/gpuops/mig.json: config all-3g of /etc/gpuops/mig-parted.yaml" in log
    # the reboot dropped the Hopper MIG mode and the instances: the plan re-enables and recreates them
    for gpu in (0, 1):
        assert f"GPU {gpu}: enable MIG mode" in log
        assert f"GPU {gpu}: create GPU instance 3g.40gb at memory slices 0-3" in log
        assert f"GPU {gpu}: create GPU instance 3g.40gb at memory slices 4-7" in log
    assert "GPU 2" not in log  # the A100 is not selected by the config's device filter
    assert "verified: 2 GPU(s) match the desired layout (changed)" in log


def test_layout_is_back_after_reboot(layout):
    h100 = [g for g in layout if g["index"] in (0, 1)]
    for gpu in h100:
        assert gpu["mig"] == 1 and gpu["pending"] == 1, gpu
        assert [(d["start"], d["size"]) for d in gpu["devices"]] == [(0, 4), (4, 4)], gpu
        assert all(d["memory_gib"] in (39, 40) for d in gpu["devices"]), gpu


def test_a100_untouched(layout):
    a100 = layout[2]
    assert "A100" in a100["name"]
    assert a100["mig"] == 0 and a100["devices"] == []


def test_nothing_left_to_do(host):
    res = host.run("/usr/local/sbin/gpuops-mig-apply --check")
    assert res.rc == 0, res.stderr
    assert "layout already in place: nothing to do" in res.stdout


def test_failure_is_visible(host):
    """A layout that does not fit: exit 1 with the engine's message, nothing changed."""
    bad = {"layout": {"7g.80gb": 2}, "device_filter": ["0x233010DE"]}
    host.check_output(f"echo '{json.dumps(bad)}' > /root/mig-bad.json")
    res = host.run("/usr/local/sbin/gpuops-mig-apply --state /root/mig-bad.json")
    assert res.rc == 1
    assert "cannot fit" in res.stderr and "nothing was changed" in res.stderr
    assert host.run("/usr/local/sbin/gpuops-mig-apply --check").rc == 0


def test_invalid_state_is_refused_by_the_modules_validator(host):
    """The boot script runs mig.json through nvidia_mig's validator: exit 2, the module's message."""
    bad = {"layout": {"3g.40gb": 2}, "config_file": "/etc/gpuops/mig-parted.yaml", "version": 1}
    host.check_output(f"echo '{json.dumps(bad)}' > /root/mig-invalid.json")
    res = host.run("/usr/local/sbin/gpuops-mig-apply --state /root/mig-invalid.json")
    assert res.rc == 2, res.stderr
    assert "invalid desired MIG state" in res.stderr
    assert "unknown option(s) version" in res.stderr


MPS_DAEMONS = ["gpu%d-slice%d-3g.40gb" % (gpu, start) for gpu in (0, 1) for start in (0, 4)]


def _env(text):
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_mps_daemons_per_mig_device_are_back_on_the_recreated_devices(host):
    """The reboot re-created the MIG devices with new UUIDs; each per-MIG-device MPS daemon (named and selected by
    placement) started on the new device, and its client environment file names the new UUID."""
    state = json.loads(host.check_output(f"python3 -m gpuops_nvml_sim --state {STATE} show"))
    current = {}
    for gpu in (0, 1):
        for gi in state["gpus"][gpu]["gpu_instances"]:
            (ci,) = gi["compute_instances"]
            current["gpu%d-slice%d-3g.40gb" % (gpu, gi["start"])] = ci["uuid"]
    assert sorted(current) == sorted(MPS_DAEMONS)
    before = _env(host.file("/root/mps-env-before-reboot").content_string)["CUDA_VISIBLE_DEVICES"]
    assert before.startswith("MIG-") and before != current["gpu0-slice0-3g.40gb"]  # the UUIDs did change
    for name, uuid in current.items():
        unit = host.service(f"gpuops-mps@{name}.service")
        assert unit.is_enabled and unit.is_running, name
        env = _env(host.file(f"/etc/gpuops/mps/{name}.env").content_string)
        assert env["CUDA_VISIBLE_DEVICES"] == uuid, name
        pid = host.file(f"/run/nvidia-mps/{name}/nvidia-cuda-mps-control.pid").content_string.strip()
        daemon_env = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        assert f"CUDA_VISIBLE_DEVICES={uuid}" in daemon_env.splitlines(), name
        client = host.run(f"env -i PATH=/usr/bin:/bin $(grep -v '^#' /etc/gpuops/mps/{name}.env | xargs) "
                          "gpuops-cuda-client --allocate-mib 256")
        assert client.rc == 0 and "client ok" in client.stdout, client.stderr
