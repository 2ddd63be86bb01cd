"""Package selection for every distribution the driver role supports (the paths not installed for real here)."""

from __future__ import annotations

import pytest

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
from ansible_collections.gpuops.nvidia.plugins.module_utils._driver import check_request, decide
from ansible_collections.gpuops.nvidia.plugins.module_utils._driver_hardware import architecture, open_modules_support
from ansible_collections.gpuops.nvidia.plugins.module_utils._driver_packages import (
    CUDA_REPO_BASE,
    default_branch,
    distribution,
    select_packages,
)

OS_RELEASES = {
    "debian12": {"ID": "debian", "VERSION_ID": "12", "VERSION_CODENAME": "bookworm", "PRETTY_NAME": "Debian 12"},
    "debian13": {"ID": "debian", "VERSION_ID": "13", "VERSION_CODENAME": "trixie", "PRETTY_NAME": "Debian 13"},
    "ubuntu2204": {"ID": "ubuntu", "VERSION_ID": "22.04", "VERSION_CODENAME": "jammy", "PRETTY_NAME": "Ubuntu 22.04"},
    "ubuntu2404": {"ID": "ubuntu", "VERSION_ID": "24.04", "VERSION_CODENAME": "noble", "PRETTY_NAME": "Ubuntu 24.04"},
    "rhel8": {"ID": "rhel", "VERSION_ID": "8.10", "PRETTY_NAME": "RHEL 8.10"},
    "rhel9": {"ID": "rhel", "VERSION_ID": "9.4", "PRETTY_NAME": "RHEL 9.4"},
    "rocky9": {"ID": "rocky", "VERSION_ID": "9.5", "PRETTY_NAME": "Rocky Linux 9.5"},
    "alma8": {"ID": "almalinux", "VERSION_ID": "8.10", "PRETTY_NAME": "AlmaLinux 8.10"},
}


def gpu(device_id, bus_id="0000:18:00.0"):
    value = int(device_id, 16)
    supported, required = open_modules_support(value)
    return {"bus_id": bus_id, "device_id": "0x%04X" % value, "architecture": architecture(value),
            "open_modules_supported": supported, "open_modules_required": required}


H100, A100, V100, B200, GH200 = "0x2330", "0x20B0", "0x1DB1", "0x2901", "0x2342"


def hardware(*device_ids, nvswitches=0, kernels=("6.8.0-48-generic",)):
    return {"gpus": [gpu(d, "0000:%02x:00.0" % (0x18 + i)) for i, d in enumerate(device_ids)],
            "nvswitches": [{"bus_id": "0000:0%d:00.0" % (5 + i), "device_id": "0x22A3"} for i in range(nvswitches)],
            "kernels": {"running": "6.1.0-0-amd64", "installed": list(kernels), "boot": kernels[-1] if kernels else None}}


def plan(dist, hw=None, machine="x86_64", **req):
    distro = distribution(OS_RELEASES[dist], machine)
    params = check_request(req)
    params["branch"] = params["branch"] or default_branch(distro, params["source"])
    return select_packages(distro, params, hw or hardware(H100))


# -- distributions ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,family,major", [
    ("debian12", "debian", "12"), ("debian13", "debian", "13"), ("ubuntu2204", "ubuntu", "22.04"),
    ("ubuntu2404", "ubuntu", "24.04"), ("rhel8", "redhat", "8"), ("rhel9", "redhat", "9"),
    ("rocky9", "redhat", "9"), ("alma8", "redhat", "8")])
def test_supported_distributions(name, family, major):
    distro = distribution(OS_RELEASES[name], "x86_64")
    assert (distro["family"], distro["major"], distro["arch"], distro["cuda_arch"]) == (family, major, "amd64", "x86_64")


def test_arm64_uses_sbsa_repository():
    assert plan("ubuntu2404", machine="aarch64", source="cuda")["repository"]["uris"] == (
        CUDA_REPO_BASE + "/ubuntu2404/sbsa/")


@pytest.mark.parametrize("os_release", [
    {"ID": "ubuntu", "VERSION_ID": "20.04"}, {"ID": "fedora", "VERSION_ID": "40"}, {"ID": "debian", "VERSION_ID": "11"}])
def test_unsupported_distribution_names_supported_ones(os_release):
    with pytest.raises(GpuopsError) as exc:
        distribution(os_release, "x86_64")
    assert exc.value.kind == "unsupported_platform"
    assert "Debian 12/13, Ubuntu 22.04/24.04, RHEL/Rocky/AlmaLinux 8/9" in exc.value.message


# -- Debian's archive ----------------------------------------------------------------------------------------

def test_debian12_archive_defaults_to_535_proprietary_with_nonfree_components():
    result = plan("debian12", hardware(A100, A100))
    assert result["branch"] == "535"
    assert result["kernel_modules"] == "proprietary"
    assert "lag" in result["kernel_modules_reason"]
    assert result["kernel_packages"] == ["nvidia-kernel-dkms"]
    assert result["userspace_packages"] == ["nvidia-smi", "libnvidia-ml1", "libcuda1", "nvidia-persistenced",
                                            "nvidia-cuda-mps"]
    assert result["components"] == ["contrib", "non-free", "non-free-firmware"]
    assert result["repository"] is None and result["apt_pin"] is None
    assert result["header_packages"] == ["linux-headers-6.8.0-48-generic"]
    assert result["kernel_module_name"] == "nvidia-current"
    assert result["hold_packages"] == result["kernel_packages"] + result["userspace_packages"]
    assert result["initramfs_command"][0] == "/usr/sbin/update-initramfs"
    assert result["nvml_package"] == "python3-pynvml"


def test_debian12_open_needs_a_version_and_then_pins_every_driver_package():
    with pytest.raises(GpuopsError) as exc:
        plan("debian12", kernel_modules="open")
    assert "driver_version" in exc.value.message and "nvidia-open-kernel-dkms" in exc.value.message
    result = plan("debian12", kernel_modules="open", version="535.261.03")
    assert result["kernel_packages"] == ["nvidia-open-kernel-dkms"]
    assert result["kernel_module_name"] == "nvidia-current-open"
    assert result["apt_pin"]["version"] == "535.261.03-*"
    assert "nvidia" in result["apt_pin"]["packages"]


def test_debian13_archive_avoids_its_open_modules_that_do_not_build():
    result = plan("debian13", hardware(H100, H100))
    assert (result["branch"], result["kernel_modules"]) == ("550", "proprietary")
    assert "pci_resize_resource" in result["kernel_modules_reason"]
    assert result["kernel_packages"] == ["nvidia-kernel-dkms"]
    opened = plan("debian13", hardware(H100, H100), kernel_modules="open")
    assert opened["kernel_packages"] == ["nvidia-open-kernel-dkms"]
    assert opened["kernel_module_name"] == "nvidia-current-open"


def test_debian_without_kernel_builds_for_the_default_kernel_headers():
    assert plan("debian13", hardware(H100, kernels=()))["header_packages"] == ["linux-headers-amd64"]


def test_debian_archive_has_no_fabricmanager():
    with pytest.raises(GpuopsError) as exc:
        plan("debian13", hardware(H100, H100, nvswitches=4))
    assert exc.value.kind == "unsupported_source"
    assert "0000:05:00.0" in exc.value.message and "driver_source: cuda" in exc.value.message
    assert plan("debian13", hardware(H100, nvswitches=4), fabricmanager="skip")["fabricmanager_packages"] == []


# -- Ubuntu ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dist", ["ubuntu2204", "ubuntu2404"])
def test_ubuntu_server_packages_for_a_branch(dist):
    result = plan(dist, hardware(H100), branch="570")
    assert result["kernel_packages"] == ["nvidia-dkms-570-server-open"]
    assert result["userspace_packages"] == ["nvidia-headless-no-dkms-570-server-open", "libnvidia-compute-570-server",
                                            "nvidia-utils-570-server", "nvidia-compute-utils-570-server"]
    assert result["components"] == ["restricted", "multiverse"]
    assert result["repository"] is None


def test_ubuntu_proprietary_and_fabricmanager_on_nvswitch_systems():
    result = plan("ubuntu2404", hardware(A100, nvswitches=6), branch="535", kernel_modules="proprietary")
    assert result["kernel_packages"] == ["nvidia-dkms-535-server"]
    assert result["fabricmanager_packages"] == ["nvidia-fabricmanager-535", "libnvidia-nscq-535"]
    assert result["fabricmanager_service"] == "nvidia-fabricmanager.service"
    assert "nvidia-fabricmanager-535" in result["hold_packages"]


def test_ubuntu_without_gpu_facts_defaults_to_580_open():
    result = plan("ubuntu2404", hardware())
    assert (result["branch"], result["kernel_modules"]) == ("580", "open")


# -- NVIDIA's CUDA repository on Debian and Ubuntu -------------------------------------------------------------

@pytest.mark.parametrize("dist,repo", [("debian12", "debian12"), ("debian13", "debian13"),
                                       ("ubuntu2204", "ubuntu2204"), ("ubuntu2404", "ubuntu2404")])
def test_cuda_repository_with_key_and_branch_pin(dist, repo):
    result = plan(dist, hardware(H100), source="cuda", branch="580")
    uri = "%s/%s/x86_64/" % (CUDA_REPO_BASE, repo)
    assert result["repository"] == {"kind": "apt", "name": "nvidia-cuda", "uris": uri, "suites": "/",
                                    "key": uri + "3bf863cc.pub"}
    assert result["apt_pin"]["version"] == "580.*"
    assert result["components"] == []
    assert result["kernel_module_name"] == "nvidia"


def test_cuda_repository_on_debian_uses_nvidias_package_names():
    result = plan("debian12", hardware(H100, nvswitches=4), source="cuda", version="580.95.05")
    assert result["kernel_packages"] == ["nvidia-kernel-open-dkms"]
    assert result["userspace_packages"] == ["nvidia-driver-cuda", "nvidia-persistenced"]
    assert result["fabricmanager_packages"] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    assert result["apt_pin"]["version"] == "580.95.05-*"


def test_cuda_repository_on_ubuntu_drops_the_server_suffix():
    result = plan("ubuntu2204", hardware(V100), source="cuda", branch="550")
    assert result["kernel_modules"] == "proprietary"
    assert result["kernel_packages"] == ["nvidia-dkms-550"]


# -- RHEL family -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dist,repo", [("rhel8", "rhel8"), ("rhel9", "rhel9"), ("rocky9", "rhel9"), ("alma8", "rhel8")])
def test_el_uses_the_cuda_repository_and_module_streams(dist, repo):
    result = plan(dist, hardware(H100), branch="580")
    assert result["source"] == "cuda" and result["package_manager"] == "dnf"
    assert result["repository"]["baseurl"] == "%s/%s/x86_64" % (CUDA_REPO_BASE, repo)
    assert result["repository"]["key"].endswith("/D42D0685.pub")
    assert result["module_stream"] == {"name": "nvidia-driver", "stream": "580-open"}
    assert result["kernel_packages"] == ["@nvidia-driver:580-open/default"]
    assert result["header_packages"] == ["kernel-devel-6.8.0-48-generic"]
    assert result["initramfs_command"][0] == "/usr/bin/dracut"
    assert result["nvml_package"] is None


def test_el_proprietary_dkms_stream_with_fabricmanager_profile_and_version():
    result = plan("rhel9", hardware(A100, nvswitches=6), kernel_modules="proprietary", version="570.133.20")
    assert result["module_stream"]["stream"] == "570-dkms"
    assert result["kernel_packages"] == ["@nvidia-driver:570-dkms/fm", "nvidia-driver-570.133.20",
                                         "kmod-nvidia-latest-dkms-570.133.20"]
    assert result["userspace_packages"] == ["nvidia-driver-cuda-570.133.20", "nvidia-persistenced-570.133.20"]
    assert result["fabricmanager_packages"] == ["nvidia-fabric-manager", "libnvidia-nscq"]
    assert result["hold_packages"] == ["nvidia-driver", "kmod-nvidia-latest-dkms", "nvidia-driver-cuda",
                                       "nvidia-persistenced", "nvidia-fabric-manager", "libnvidia-nscq"]


# -- refusals ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dist,source,valid,hint", [
    ("debian12", "distribution", ["535"], "apt-cache policy nvidia-kernel-dkms"),
    ("ubuntu2404", "distribution", ["535", "550", "570", "575", "580"], "apt-cache search --names-only"),
    ("ubuntu2404", "cuda", None, "cuda-drivers"),
    ("rhel9", "cuda", None, "dnf module list nvidia-driver")])
def test_unknown_branch_names_valid_ones_and_how_to_list_them(dist, source, valid, hint):
    with pytest.raises(GpuopsError) as exc:
        plan(dist, source=source, branch="999")
    assert exc.value.kind == "unknown_branch"
    assert "999" in exc.value.message and hint in exc.value.message
    if valid:
        assert exc.value.details["valid_branches"] == valid


def test_open_modules_refused_before_turing():
    with pytest.raises(GpuopsError) as exc:
        plan("ubuntu2404", hardware(V100), kernel_modules="open")
    assert exc.value.kind == "invalid_argument"
    assert "volta" in exc.value.message and "proprietary" in exc.value.message


def test_proprietary_refused_on_open_only_gpus():
    for device in (B200, GH200):
        with pytest.raises(GpuopsError) as exc:
            plan("ubuntu2404", hardware(device), kernel_modules="proprietary")
        assert "open kernel modules only" in exc.value.message


def test_auto_picks_open_for_blackwell_and_refuses_an_old_branch():
    assert plan("ubuntu2404", hardware(B200), branch="580")["kernel_modules"] == "open"
    with pytest.raises(GpuopsError) as exc:
        plan("ubuntu2404", hardware(B200), branch="535")
    assert "570 or newer" in exc.value.message


def test_mixed_pre_turing_and_open_only_gpus_cannot_be_driven():
    with pytest.raises(GpuopsError) as exc:
        plan("ubuntu2404", hardware(V100, B200), branch="580")
    assert exc.value.kind == "unsupported_hardware"


@pytest.mark.parametrize("params,fragment", [
    ({"branch": "58"}, "three digits"),
    ({"branch": "latest"}, "three digits"),
    ({"version": "580"}, "full driver version"),
    ({"version": "580.95.05-1ubuntu1"}, "without the distribution's revision"),
    ({"branch": "570", "version": "580.95.05"}, "not on branch 570"),
    ({"kernel_modules": "nouveau"}, "kernel_modules"),
    ({"sysfs_root": "sys"}, "absolute"),
    ({"bogus": 1}, "unknown option"),
])
def test_bad_request_is_refused_with_what_is_valid(params, fragment):
    with pytest.raises(GpuopsError) as exc:
        check_request(params)
    assert fragment in exc.value.message


def test_version_implies_its_branch():
    assert check_request({"version": "570.133.20"})["branch"] == "570"


# -- the decision ------------------------------------------------------------------------------------------

DEBIAN13 = distribution(OS_RELEASES["debian13"], "x86_64")


def test_no_gpu_is_skipped_unless_forced():
    params = check_request({})
    decision = decide(params, DEBIAN13, hardware(), None, None)
    assert decision["action"] == "skip" and decision["plan"] is None
    assert "driver_install_without_gpu" in decision["msg"]
    forced = decide(check_request({"install_without_gpu": True}), DEBIAN13, hardware(), None, None)
    assert forced["action"] == "install"


def test_loaded_requested_driver_means_nothing_to_do():
    loaded = {"version": "550.163.01", "branch": "550", "kernel_modules": "proprietary"}
    installed = {"kernel": "6.12.0-1-amd64", "file": "/x", "version": "550.163.01", "branch": "550"}
    decision = decide(check_request({}), DEBIAN13, hardware(H100), loaded, installed)
    assert decision["action"] == "nothing_to_do" and not decision["reboot_required"]
    assert "nothing to do" in decision["msg"]


def test_installed_but_not_loaded_requires_a_reboot():
    installed = {"kernel": "6.12.0-1-amd64", "file": "/x", "version": "550.163.01", "branch": "550"}
    decision = decide(check_request({}), DEBIAN13, hardware(H100), None, installed)
    assert decision["action"] == "install" and decision["reboot_required"]
    assert "no NVIDIA driver is loaded" in decision["msg"]


def test_other_loaded_branch_or_flavour_or_version_is_an_install():
    old = {"version": "535.247.01", "branch": "535", "kernel_modules": "proprietary"}
    assert decide(check_request({}), DEBIAN13, hardware(H100), old, None)["action"] == "install"
    proprietary = {"version": "550.163.01", "branch": "550", "kernel_modules": "proprietary"}
    assert decide(check_request({"kernel_modules": "open"}), DEBIAN13, hardware(H100), proprietary,
                  None)["action"] == "install"
    assert decide(check_request({"version": "550.100.01"}), DEBIAN13, hardware(H100),
                  dict(proprietary, kernel_modules="open"), None)["action"] == "install"
