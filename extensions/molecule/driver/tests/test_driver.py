"""driver role: Debian's driver packages really installed, DKMS built for the boot kernel, held; nothing on no-GPU."""

import re

import pytest

MINIMUM_NVML = (12, 535, 77)
FLAVOR = {
    # driver_version 535.261.03 makes the open modules installable on Debian 12, so auto takes them
    "driver-d12": {"kernel": "nvidia-open-kernel-dkms", "dkms": "nvidia-current-open", "module": "nvidia-current-open",
                   "branch": "535"},
    "driver-d13": {"kernel": "nvidia-kernel-dkms", "dkms": "nvidia-current", "module": "nvidia-current",
                   "branch": "550"},
}
USERSPACE = ["nvidia-smi", "libnvidia-ml1", "libcuda1", "nvidia-persistenced", "nvidia-cuda-mps"]
# open modules need the GSP firmware at the driver's version
FIRMWARE = {"driver-d12": "firmware-nvidia-gsp"}
ROLE_FILES = ["/etc/modprobe.d/gpuops-driver-blacklist-nouveau.conf", "/etc/modprobe.d/gpuops-driver-nvidia.conf"]


def name(host):
    return host.backend.get_hostname()


def with_driver(host):
    if name(host) not in FLAVOR:
        pytest.skip("no driver on %s" % name(host))
    return FLAVOR[name(host)]


def boot_kernel(host):
    images = host.check_output("ls /boot | sed -n 's/^vmlinuz-//p' | sort -V").split()
    assert images, "the node has no kernel image"
    return images[-1]


def version_tuple(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_driver_packages_installed_and_held(host):
    flavor = with_driver(host)
    # multi-arch libraries are listed as name:arch
    selections = dict((name.split(":")[0], state) for name, state in
                      (line.split() for line in host.check_output("dpkg --get-selections").splitlines()))
    for package in [flavor["kernel"]] + USERSPACE:
        assert host.package(package).is_installed, package
        assert selections.get(package) == "hold", package
    assert host.package(flavor["kernel"]).version.startswith(flavor["branch"] + ".")
    if name(host) in FIRMWARE:
        assert host.package(FIRMWARE[name(host)]).version == host.package(flavor["kernel"]).version


def test_headers_of_the_boot_kernel_installed(host):
    with_driver(host)
    assert host.package("linux-headers-%s" % boot_kernel(host)).is_installed


def test_dkms_built_the_module_for_the_boot_kernel(host):
    flavor = with_driver(host)
    kernel = boot_kernel(host)
    status = host.check_output("dkms status")
    assert re.search(r"%s/%s\.[0-9.]+, %s, x86_64: installed" % (flavor["dkms"], flavor["branch"], re.escape(kernel)),
                     status), status
    module = host.check_output("modinfo -k %s -n %s", kernel, flavor["module"])
    assert "/updates/dkms/" in module
    version = host.check_output("modinfo -F version %s", module)
    assert host.package(flavor["kernel"]).version.startswith(version + "-")


def test_the_running_kernel_is_the_hosts(host):
    """The node boots Debian's kernel; the container runs the host's, which has no nvidia module loaded."""
    with_driver(host)
    assert host.check_output("uname -r") != boot_kernel(host)
    assert not host.file("/sys/module/nvidia").exists


def test_archive_components_enabled_with_deb822(host):
    with_driver(host)
    sources = host.file("/etc/apt/sources.list.d/gpuops-driver-deb-debian-org-debian.sources")
    assert sources.exists
    assert "Components: contrib non-free non-free-firmware" in sources.content_string
    assert "Types: deb" in sources.content_string


def test_nouveau_blacklisted_in_the_initramfs_of_the_boot_kernel(host):
    with_driver(host)
    blacklist = host.file(ROLE_FILES[0]).content_string
    assert "blacklist nouveau" in blacklist and "options nouveau modeset=0" in blacklist
    listing = host.check_output("lsinitramfs /boot/initrd.img-%s", boot_kernel(host))
    assert "etc/modprobe.d/gpuops-driver-blacklist-nouveau.conf" in listing


def test_nvreg_options_for_the_debian_module_name(host):
    flavor = with_driver(host)
    options = host.file(ROLE_FILES[1]).content_string
    assert "options %s NVreg_EnableGpuFirmware=1" % flavor["module"] in options


def test_real_tools_installed_behind_the_stand_ins(host):
    """The packages' nvidia-persistenced and MPS control are on the node (diverted: the stand-ins act on the
    simulated GPUs); Debian's nvidia-smi lives under /usr/lib/nvidia and reaches /usr/bin through alternatives."""
    with_driver(host)
    diversions = host.check_output("dpkg-divert --list")
    for tool in ("nvidia-persistenced", "nvidia-cuda-mps-control"):
        assert host.file("/usr/bin/%s.distrib" % tool).exists, tool
        assert "diversion of /usr/bin/%s to /usr/bin/%s.distrib" % (tool, tool) in diversions
    shipped = [path for path in host.check_output("dpkg -L nvidia-smi").splitlines()
               if path.endswith("/nvidia-smi") and path != "/usr/bin/nvidia-smi"]
    assert shipped and host.file(shipped[0]).exists, shipped


def test_nvml_binding_from_debian_13s_package(host):
    with_driver(host)
    if name(host) != "driver-d13":
        pytest.skip("Debian 12's package is too old")
    assert version_tuple(host.package("python3-pynvml").version) >= MINIMUM_NVML
    assert not host.file("/opt/gpuops/nvml").exists


def test_nvml_binding_in_a_virtual_environment(host):
    """Debian 12's python3-pynvml (11.525) is too old: the role made a venv that still sees the system's packages."""
    with_driver(host)
    if name(host) != "driver-d12":
        pytest.skip("Debian 13's package is new enough")
    python = "/opt/gpuops/nvml/bin/python3"
    version = host.check_output("%s -c 'from importlib import metadata; print(metadata.version(\"nvidia-ml-py\"))'",
                                python)
    assert version_tuple(version) >= MINIMUM_NVML
    assert "include-system-site-packages = true" in host.file("/opt/gpuops/nvml/pyvenv.cfg").content_string
    assert not host.package("python3-pynvml").is_installed


def test_driver_version_pinned_with_apt_preferences(host):
    flavor = with_driver(host)
    if name(host) != "driver-d12":
        assert not host.file("/etc/apt/preferences.d/gpuops-driver.pref").exists  # no version, no pin
        return
    pin = host.file("/etc/apt/preferences.d/gpuops-driver.pref").content_string
    assert "Pin: version 535.261.03-*" in pin and "Pin-Priority: 1001" in pin
    policy = host.check_output("apt-cache policy %s", flavor["kernel"])
    assert re.search(r"\*\*\* 535\.261\.03-1 1001", policy), policy


def test_persistenced_role_on_top(host):
    with_driver(host)
    service = host.service("nvidia-persistenced")
    assert service.is_enabled and service.is_running
    assert host.file("/etc/systemd/system/nvidia-persistenced.service.d/50-gpuops-persistenced.conf").exists


def test_no_gpu_node_untouched(host):
    if name(host) != "driver-nogpu":
        pytest.skip("has GPUs")
    for package in ["nvidia-kernel-dkms", "nvidia-open-kernel-dkms", "dkms", "nvidia-smi"]:
        assert not host.package(package).is_installed, package
    for path in ROLE_FILES + ["/etc/apt/preferences.d/gpuops-driver.pref"]:
        assert not host.file(path).exists, path
    assert not host.check_output("ls /etc/apt/sources.list.d").count("gpuops-driver")
