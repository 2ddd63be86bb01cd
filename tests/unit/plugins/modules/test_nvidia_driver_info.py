"""nvidia_driver_info and the driver engine's readers over fake sysfs, /boot, /lib/modules and apt trees."""

from __future__ import annotations

import os

import pytest

from ansible_collections.gpuops.nvidia.plugins.module_utils import _driver, _driver_apt, _driver_hardware, _nvml
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_driver_info as module
from gpuops_nvml_sim import state as simstate


def write(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), "w") as handle:
        handle.write(text)


def pci(root, bus_id, vendor, device, pci_class):
    base = os.path.join(str(root), "bus", "pci", "devices", bus_id)
    for name, value in (("vendor", vendor), ("device", device), ("class", pci_class),
                        ("subsystem_vendor", vendor), ("subsystem_device", "0x1463")):
        write(os.path.join(base, name), value + "\n")


@pytest.fixture
def hgx(tmp_path):
    """A BMC's VGA, an Intel NIC, two H100 SXM and two NVSwitches."""
    root = tmp_path / "sys"
    pci(root, "0000:02:00.0", "0x1a03", "0x2000", "0x030000")
    pci(root, "0000:03:00.0", "0x8086", "0x1533", "0x020000")
    pci(root, "0000:18:00.0", "0x10de", "0x2330", "0x030200")
    pci(root, "0000:2a:00.0", "0x10de", "0x2330", "0x030200")
    pci(root, "0000:05:00.0", "0x10de", "0x22a3", "0x068000")
    pci(root, "0000:06:00.0", "0x10de", "0x22a3", "0x068000")
    pci(root, "0000:18:00.1", "0x10de", "0x22e8", "0x040300")  # a GPU's audio function: neither
    return str(root)


def test_pci_devices_finds_gpus_and_nvswitches_only(hgx):
    devices = _driver_hardware.pci_devices(hgx)
    assert [g["bus_id"] for g in devices["gpus"]] == ["0000:18:00.0", "0000:2a:00.0"]
    assert devices["gpus"][0]["pci_device_id"] == "0x233010DE"
    assert devices["gpus"][0]["architecture"] == "hopper"
    assert devices["gpus"][0]["open_modules_supported"] and not devices["gpus"][0]["open_modules_required"]
    assert [s["bus_id"] for s in devices["nvswitches"]] == ["0000:05:00.0", "0000:06:00.0"]


def test_no_sysfs_means_no_devices(tmp_path):
    assert _driver_hardware.pci_devices(str(tmp_path / "missing")) == {"gpus": [], "nvswitches": []}


@pytest.mark.parametrize("device_id,arch,supported,required", [
    (0x1DB1, "volta", False, False), (0x1B06, "pascal", False, False), (0x13F0, "maxwell", False, False),
    (0x1E04, "turing", True, False), (0x1F82, "turing", True, False), (0x20B0, "ampere", True, False),
    (0x2236, "ampere", True, False), (0x2330, "hopper", True, False), (0x2342, "hopper", True, True),
    (0x27B8, "ada", True, False), (0x2901, "blackwell", True, True), (0x2B85, "blackwell", True, True)])
def test_architecture_and_open_module_support(device_id, arch, supported, required):
    assert _driver_hardware.architecture(device_id) == arch
    assert _driver_hardware.open_modules_support(device_id) == (supported, required)


def test_loaded_driver_from_sysfs_and_proc(tmp_path):
    root = tmp_path / "sys"
    assert _driver_hardware.loaded_driver(str(root)) is None
    write(root / "module" / "nvidia" / "version", "580.159.04\n")
    banner = tmp_path / "version"
    write(banner, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build\n")
    assert _driver_hardware.loaded_driver(str(root), str(banner)) == {
        "version": "580.159.04", "branch": "580", "kernel_modules": "open"}
    write(banner, "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  Wed Jun 25 2025\n")
    assert _driver_hardware.loaded_driver(str(root), str(banner))["kernel_modules"] == "proprietary"
    assert _driver_hardware.loaded_driver(str(root), str(tmp_path / "none"))["kernel_modules"] is None


@pytest.fixture
def kernel_tree(tmp_path):
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    for release in ("6.1.0-9-amd64", "6.1.0-41-amd64"):
        write(boot / ("vmlinuz-" + release), "")
        write(modules / release / "modules.dep", "kernel/drivers/net/e1000e.ko.xz:\n")
    write(boot / "vmlinuz-6.1.0-3-amd64", "")  # image without modules: half removed
    return str(boot), str(modules)


def test_kernels_orders_versions_and_boots_the_newest(kernel_tree):
    facts = _driver_hardware.kernels(*kernel_tree, running="6.18.44-host")
    assert facts == {"running": "6.18.44-host", "installed": ["6.1.0-9-amd64", "6.1.0-41-amd64"],
                     "boot": "6.1.0-41-amd64"}


def test_kernels_without_images_boot_nothing(tmp_path):
    assert _driver_hardware.kernels(str(tmp_path), str(tmp_path), running="6.18")["boot"] is None


def test_installed_driver_is_the_boot_kernels_module(kernel_tree):
    _boot, modules = kernel_tree
    write(os.path.join(modules, "6.1.0-41-amd64", "modules.dep"),
          "kernel/drivers/net/e1000e.ko.xz:\nupdates/dkms/nvidia-current.ko.xz: kernel/drivers/i2c/i2c-core.ko.xz\n")
    calls = []

    def run(argv):
        calls.append(argv)
        return 0, "535.261.03\n", ""

    facts = _driver_hardware.kernels(*kernel_tree, running="6.18.44-host")
    found = _driver.installed_driver(facts, run, modules)
    assert found == {"kernel": "6.1.0-41-amd64", "version": "535.261.03", "branch": "535",
                     "file": os.path.join(modules, "6.1.0-41-amd64", "updates/dkms/nvidia-current.ko.xz")}
    assert calls == [["modinfo", "-F", "version", found["file"]]]
    assert _driver.installed_driver(dict(facts, boot="6.1.0-9-amd64"), run, modules) is None


def test_os_release_parsing(tmp_path):
    write(tmp_path / "os-release", 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nVERSION_ID="24.04"\n# x\n')
    assert _driver_hardware.os_release(str(tmp_path / "os-release"))["VERSION_ID"] == "24.04"


# -- apt sources ---------------------------------------------------------------------------------------------

def test_missing_components_from_one_line_sources():
    entries = _driver_apt._one_line(
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security "
        "bookworm-security main contrib\n# deb http://x/ bookworm main\ndeb-src http://deb.debian.org/debian bookworm main\n")
    groups = _driver_apt.missing_components(entries, "bookworm", ["contrib", "non-free", "non-free-firmware"])
    assert groups == [
        {"name": "gpuops-driver-deb-debian-org-debian", "uris": "http://deb.debian.org/debian", "suites": ["bookworm"],
         "components": ["contrib", "non-free", "non-free-firmware"], "signed_by": None},
        {"name": "gpuops-driver-deb-debian-org-debian-security", "uris": "http://deb.debian.org/debian-security",
         "suites": ["bookworm-security"], "components": ["non-free", "non-free-firmware"],
         "signed_by": "/usr/share/keyrings/debian-archive-keyring.gpg"}]


def test_missing_components_from_deb822_and_nothing_when_enabled(tmp_path):
    etc = tmp_path / "apt"
    write(etc / "sources.list.d" / "ubuntu.sources",
          "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu\nSuites: noble noble-updates\n"
          "Components: main restricted universe multiverse\nSigned-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n\n"
          "Types: deb\nURIs: http://security.ubuntu.com/ubuntu\nSuites: noble-security\nComponents: main universe\n"
          "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n\n"
          "Types: deb\nURIs: http://disabled.example/ubuntu\nSuites: noble\nComponents: main\nEnabled: no\n")
    groups = _driver_apt.missing_components(_driver_apt.read_sources(str(etc)), "noble", ["restricted", "multiverse"])
    assert groups == [{"name": "gpuops-driver-security-ubuntu-com-ubuntu", "uris": "http://security.ubuntu.com/ubuntu",
                       "suites": ["noble-security"], "components": ["restricted", "multiverse"],
                       "signed_by": "/usr/share/keyrings/ubuntu-archive-keyring.gpg"}]


def test_the_roles_own_files_are_ignored_so_a_second_run_adds_the_same(tmp_path):
    etc = tmp_path / "apt"
    write(etc / "sources.list", "deb http://deb.debian.org/debian trixie main\n")
    first = _driver_apt.missing_components(_driver_apt.read_sources(str(etc)), "trixie", ["contrib", "non-free"])
    write(etc / "sources.list.d" / (first[0]["name"] + ".sources"),
          "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: contrib non-free\n")
    assert _driver_apt.missing_components(_driver_apt.read_sources(str(etc)), "trixie", ["contrib", "non-free"]) == first
    write(etc / "sources.list.d" / "admin.list", "deb http://deb.debian.org/debian trixie contrib non-free\n")
    assert _driver_apt.missing_components(_driver_apt.read_sources(str(etc)), "trixie", ["contrib", "non-free"]) == []


# -- the module ----------------------------------------------------------------------------------------------

def test_module_skips_a_node_without_gpus(run, tmp_path):
    pci(tmp_path / "sys", "0000:02:00.0", "0x1a03", "0x2000", "0x030000")
    result = run(module, {"sysfs_root": str(tmp_path / "sys")}, check_mode=True)
    assert not result.failed and not result["changed"]
    assert result["action"] == "skip" and result["plan"] is None
    assert "driver_install_without_gpu" in result["msg"]


def test_module_plans_an_install_and_reports_the_node(run, hgx, monkeypatch):
    monkeypatch.setattr(_driver, "os_release", lambda path: {"ID": "ubuntu", "VERSION_ID": "24.04",
                                                             "VERSION_CODENAME": "noble"})
    result = run(module, {"sysfs_root": hgx, "branch": "580"})
    assert not result.failed, result
    assert result["action"] == "install"
    assert result["plan"]["fabricmanager_packages"] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    assert result["plan"]["kernel_packages"] == ["nvidia-dkms-580-server-open"]
    assert len(result["gpus"]) == 2 and len(result["nvswitches"]) == 2
    assert result["python"]["nvml_version"]


def test_module_fails_with_the_payload_on_an_unknown_branch(run, hgx, monkeypatch):
    monkeypatch.setattr(_driver, "os_release", lambda path: {"ID": "debian", "VERSION_ID": "12",
                                                             "VERSION_CODENAME": "bookworm"})
    result = run(module, {"sysfs_root": hgx, "branch": "999", "fabricmanager": "skip"})
    assert result.failed
    assert result["error_kind"] == "unknown_branch"
    assert result["valid_branches"] == ["535"]
    assert "apt-cache policy" in result["msg"]


def test_module_sees_the_loaded_requested_driver_as_nothing_to_do(run, hgx, monkeypatch):
    write(os.path.join(hgx, "module", "nvidia", "version"), "580.159.04\n")
    monkeypatch.setattr(_driver, "os_release", lambda path: {"ID": "ubuntu", "VERSION_ID": "24.04",
                                                             "VERSION_CODENAME": "noble"})
    result = run(module, {"sysfs_root": hgx, "branch": "580", "fabricmanager": "skip"}, check_mode=True)
    assert result["action"] == "nothing_to_do" and not result["changed"]
    assert result["loaded"]["version"] == "580.159.04"


# -- the NVML binding's minimum version ---------------------------------------------------------------------

def test_nvml_session_refuses_an_old_nvidia_ml_py(monkeypatch):
    monkeypatch.setattr(_nvml, "nvml_py_version", lambda: "11.525.112")
    with pytest.raises(_nvml.NvmlError) as exc:
        _nvml.NvmlSession().open()
    assert exc.value.kind == "pynvml_too_old"
    assert "11.525.112" in exc.value.message and _nvml.NVML_PY_MINIMUM in exc.value.message
    assert exc.value.details == {"nvml_py_version": "11.525.112", "nvml_py_minimum": _nvml.NVML_PY_MINIMUM}


def test_nvml_session_accepts_the_minimum_and_unknown_versions(monkeypatch, sim):
    sim.create("h100-80gb:1")
    for version in (_nvml.NVML_PY_MINIMUM, "13.615.71", None):
        monkeypatch.setattr(_nvml, "nvml_py_version", lambda v=version: v)
        with _nvml.NvmlSession() as session:
            assert len(session.gpus()) == 1


def test_installed_nvidia_ml_py_is_read_from_its_metadata():
    assert _nvml._version_tuple(_nvml.nvml_py_version()) >= _nvml._version_tuple(_nvml.NVML_PY_MINIMUM)


# -- the NVLink fabric, read through NVML when a driver is loaded ---------------------------------------------

ZERO_UUID = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def h200_vm(tmp_path, monkeypatch):
    """Two H200s passed through to a VM: no NVSwitch on its PCI bus, driver 580 loaded."""
    root = tmp_path / "sys"
    pci(root, "0000:00:06.0", "0x10de", "0x2335", "0x030200")
    pci(root, "0000:00:07.0", "0x10de", "0x2335", "0x030200")
    write(root / "module" / "nvidia" / "version", "580.159.04\n")
    monkeypatch.setattr(_driver, "os_release", lambda path: {"ID": "ubuntu", "VERSION_ID": "24.04",
                                                             "VERSION_CODENAME": "noble"})
    return str(root)


def test_a_vm_whose_host_runs_the_fabric_says_why_no_fabric_manager(run, h200_vm, sim):
    """As on the lent H200 x2 VM: fabric completed, clique 0 and a zero cluster UUID, no NVSwitch on PCI."""
    sim.create("h200-141gb:2", nvswitch=True)
    with sim.edit() as data:
        simstate.set_fabric(data, [0, 1], "completed", clique_id=0, cluster_uuid=ZERO_UUID)
    result = run(module, {"sysfs_root": h200_vm, "branch": "580"}, check_mode=True)
    assert not result.failed, result
    assert result["action"] == "nothing_to_do" and result["nvswitches"] == []
    assert result["plan"]["fabricmanager_packages"] == [] and result["plan"]["fabricmanager_service"] is None
    assert result["fabric"]["read"] and result["fabric"]["error"] is None
    assert [(g["state"], g["status"], g["clique_id"], g["cluster_uuid"]) for g in result["fabric"]["gpus"]] == [
        ("completed", "success", 0, ZERO_UUID)] * 2
    assert "NVML reports NVLink fabric state completed on" in result["msg"]
    assert "managed outside this node" in result["msg"] and "not installed here" in result["msg"]
    assert "WARNING" not in result["msg"]


def test_a_fabric_not_yet_registered_is_a_warning_naming_the_gpus(run, h200_vm, sim):
    sim.create("h200-141gb:2", nvswitch=True)
    with sim.edit() as data:
        simstate.set_fabric(data, [1], "not_started")
    result = run(module, {"sysfs_root": h200_vm, "branch": "580", "fabricmanager": "install"}, check_mode=True)
    assert not result.failed, result
    bus_ids = [g["bus_id"] for g in result["fabric"]["gpus"]]
    assert result["msg"].count("WARNING") == 1
    assert "completed on %s; not_started on %s" % (bus_ids[0], bus_ids[1]) in result["msg"]
    assert "installed as requested (driver_fabricmanager: install)" in result["msg"]


def test_gpus_outside_any_fabric_add_nothing_to_the_message(run, h200_vm, sim):
    sim.create("h200-141gb:2")
    result = run(module, {"sysfs_root": h200_vm, "branch": "580"}, check_mode=True)
    assert [g["state"] for g in result["fabric"]["gpus"]] == ["not_supported"] * 2
    assert "abric" not in result["msg"]


def test_fabric_is_not_read_without_a_loaded_driver_or_a_usable_nvml(run, hgx, monkeypatch):
    monkeypatch.setattr(_driver, "os_release", lambda path: {"ID": "ubuntu", "VERSION_ID": "24.04",
                                                             "VERSION_CODENAME": "noble"})
    result = run(module, {"sysfs_root": hgx, "branch": "580"})
    assert result["fabric"] == {"read": False, "error": "no NVIDIA driver is loaded", "gpus": []}
    assert "2 NVSwitches on the PCI bus: nvidia-fabricmanager goes with the driver" in result["msg"]
    write(os.path.join(hgx, "module", "nvidia", "version"), "580.159.04\n")
    monkeypatch.setattr(_nvml, "nvml_py_version", lambda: "11.525.112")
    result = run(module, {"sysfs_root": hgx, "branch": "580", "fabricmanager": "skip"})
    assert not result.failed, result
    assert not result["fabric"]["read"] and "(pynvml_too_old)" in result["fabric"]["error"]
    assert "driver_fabricmanager is skip: CUDA fails" in result["msg"]
