# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which repository and packages install an NVIDIA driver on each supported distribution. Plain Python.

`select_packages(distro, request, hardware)` turns the checked request (branch, kernel modules, version, source,
fabric manager) into the distribution's way of installing it: repository, packages, hold list, apt pin or dnf
module stream, kernel headers and the initramfs command. The tables here are the only place that knows package
names; the role renders what this returns, and the unit tests check every distribution against it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError

CUDA_REPO_BASE = "https://developer.download.nvidia.com/compute/cuda/repos"
# NVIDIA's signing keys for the CUDA network repositories (Debian/Ubuntu, and RHEL and its rebuilds).
CUDA_APT_KEY = "3bf863cc.pub"
CUDA_RPM_KEY = "D42D0685.pub"

# Branches each source offers. Debian's archive has one branch per release; Canonical's archive and NVIDIA's CUDA
# repositories several. Extend with a release of this collection when a new branch appears.
DEBIAN_BRANCH = {"12": "535", "13": "550"}
UBUNTU_BRANCHES = ("535", "550", "570", "575", "580")
CUDA_BRANCHES = ("535", "550", "555", "560", "565", "570", "575", "580")
DEFAULT_BRANCH = "580"
# Debian 12's archive has the open kernel modules only at 535.261.03 while its driver went on with security updates
# (535.309.01 in bookworm-security): open needs an explicit version there, which the role pins for every package.
DEBIAN_OPEN_LAGS = ("12",)
# Debian 13's open kernel modules (550.163.01, release and backports) do not build against its kernel 6.12.107
# (nv-pci.c calls pci_resize_resource with the old arguments); its proprietary ones do. `auto` avoids them there.
DEBIAN_OPEN_BROKEN = {"13": "Debian 13's open kernel modules 550.163.01 do not build against its kernel 6.12.107 "
                            "and later (pci_resize_resource)"}
OPEN_MINIMUM_BRANCH = 515
BLACKWELL_MINIMUM_BRANCH = 570

SUPPORTED = "Debian 12/13, Ubuntu 22.04/24.04, RHEL/Rocky/AlmaLinux 8/9"
_REDHAT_IDS = ("rhel", "rocky", "almalinux")

# Every binary package of NVIDIA's driver source packages has one of these in its name (apt preferences regex).
APT_PIN_PACKAGES = "/nvidia|^libcuda|^libnvcuvid|^libnvoptix|^libnvidia/"


def distribution(os_release, machine):
    """The distribution from /etc/os-release: {family, id, major, codename, arch, cuda_arch, name}."""
    dist_id = os_release.get("ID", "").lower()
    version = os_release.get("VERSION_ID", "")
    major = version.split(".")[0]
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine)
    cuda_arch = {"x86_64": "x86_64", "aarch64": "sbsa"}.get(machine)
    name = os_release.get("PRETTY_NAME") or ("%s %s" % (dist_id, version)).strip()
    if arch is None:
        raise GpuopsError("unsupported CPU architecture %s: the driver role supports x86_64 and aarch64" % machine,
                          kind="unsupported_platform")
    if dist_id == "debian" and major in DEBIAN_BRANCH:
        family = "debian"
    elif dist_id == "ubuntu" and version in ("22.04", "24.04"):
        family, major = "ubuntu", version
    elif dist_id in _REDHAT_IDS and major in ("8", "9"):
        family = "redhat"
    else:
        raise GpuopsError("unsupported distribution %s: the driver role supports %s" % (name, SUPPORTED),
                          kind="unsupported_platform")
    return {"family": family, "id": dist_id, "major": major, "codename": os_release.get("VERSION_CODENAME"),
            "arch": arch, "cuda_arch": cuda_arch, "name": name}


def _cuda_repo_name(distro):
    if distro["family"] == "ubuntu":
        return "ubuntu" + distro["major"].replace(".", "")
    if distro["family"] == "redhat":
        return "rhel" + distro["major"]
    return "debian" + distro["major"]


def known_branches(distro, source):
    if distro["family"] == "debian" and source == "distribution":
        return (DEBIAN_BRANCH[distro["major"]],)
    if distro["family"] == "ubuntu" and source == "distribution":
        return UBUNTU_BRANCHES
    return CUDA_BRANCHES


def list_branches_hint(distro, source):
    """The command that lists the branches a source really offers, for error messages."""
    if distro["family"] == "redhat":
        return "dnf module list nvidia-driver (with NVIDIA's CUDA repository configured)"
    if source == "cuda":
        return "apt-cache search --names-only '^cuda-drivers-[0-9]+$' (with NVIDIA's CUDA repository configured)"
    if distro["family"] == "ubuntu":
        return "apt-cache search --names-only '^nvidia-headless-[0-9]+-server(-open)?$'"
    return "apt-cache policy nvidia-kernel-dkms nvidia-open-kernel-dkms (with contrib and non-free enabled)"


def default_branch(distro, source):
    if distro["family"] == "debian" and source == "distribution":
        return DEBIAN_BRANCH[distro["major"]]
    return DEFAULT_BRANCH


def _describe(gpus):
    return ", ".join("%s (%s, %s)" % (g["bus_id"], g["device_id"], g["architecture"]) for g in gpus)


def kernel_modules_for(distro, request, gpus):
    """(`open` | `proprietary`, reason) for the request's kernel_modules and the GPUs on the bus.

    Raises when the request cannot work on these GPUs: open modules on a GPU older than Turing, proprietary ones on
    a GPU that only the open modules support (Grace Hopper, Blackwell).
    """
    wanted, branch = request["kernel_modules"], int(request["branch"])
    too_old = [g for g in gpus if not g["open_modules_supported"]]
    open_only = [g for g in gpus if g["open_modules_required"]]
    if too_old and open_only:
        raise GpuopsError("this node mixes GPUs that only the proprietary kernel modules support (%s) with GPUs that "
                          "only the open ones support (%s): no NVIDIA driver drives both"
                          % (_describe(too_old), _describe(open_only)), kind="unsupported_hardware")
    if open_only and branch < BLACKWELL_MINIMUM_BRANCH and any(g["architecture"] == "blackwell" for g in open_only):
        raise GpuopsError("Blackwell GPUs (%s) need driver branch %d or newer, not %s%s"
                          % (_describe(open_only), BLACKWELL_MINIMUM_BRANCH, branch,
                             ": Debian's archive has no such branch, use driver_source: cuda"
                             if distro["family"] == "debian" and request["source"] == "distribution" else ""),
                          kind="unsupported_hardware")
    lagging = (distro["family"] == "debian" and request["source"] == "distribution"
               and distro["major"] in DEBIAN_OPEN_LAGS)
    if wanted == "open":
        if too_old:
            raise GpuopsError("the open kernel modules do not support GPUs older than Turing, found: %s; set "
                              "driver_kernel_modules: proprietary (or auto)" % _describe(too_old),
                              kind="invalid_argument")
        if branch < OPEN_MINIMUM_BRANCH:
            raise GpuopsError("branch %s has no open kernel modules (they start with %d)" % (branch, OPEN_MINIMUM_BRANCH),
                              kind="invalid_argument")
        if lagging and not request["version"]:
            raise GpuopsError("Debian %s's archive has the open kernel modules only at an older version than its "
                              "(security-updated) driver: set driver_version to the version of nvidia-open-kernel-dkms "
                              "(apt-cache policy nvidia-open-kernel-dkms), which the role then pins for every driver "
                              "package, or use driver_kernel_modules: proprietary" % distro["major"],
                              kind="invalid_argument")
        return "open", "requested"
    if wanted == "proprietary":
        if open_only:
            raise GpuopsError("these GPUs are supported by the open kernel modules only: %s; set "
                              "driver_kernel_modules: open (or auto)" % _describe(open_only), kind="invalid_argument")
        return "proprietary", "requested"
    if open_only:
        return "open", "the GPUs need them (%s)" % _describe(open_only)
    if too_old:
        return "proprietary", "GPUs older than Turing need them (%s)" % _describe(too_old)
    if lagging and not request["version"]:
        return "proprietary", ("Debian %s's open kernel modules lag its security-updated driver; set driver_version "
                               "and driver_kernel_modules: open to use them" % distro["major"])
    if distro["family"] == "debian" and request["source"] == "distribution" and distro["major"] in DEBIAN_OPEN_BROKEN:
        return "proprietary", DEBIAN_OPEN_BROKEN[distro["major"]]
    return "open", "NVIDIA's recommendation for Turing and newer" if gpus else "NVIDIA's default without GPU facts"


def _headers(distro, kernel_facts):
    releases = kernel_facts.get("installed") or []
    if distro["family"] == "redhat":
        return ["kernel-devel-%s" % r for r in releases] or ["kernel-devel"]
    if releases:
        return ["linux-headers-%s" % r for r in releases]
    return ["linux-headers-%s" % (distro["arch"] if distro["family"] == "debian" else "generic")]


def _apt_family(distro, request, flavor):
    """Packages on Debian and Ubuntu, from the distribution's archive or NVIDIA's CUDA repository."""
    branch, source, is_open = request["branch"], request["source"], flavor == "open"
    if distro["family"] == "debian" and source == "distribution":
        kernel = ["nvidia-open-kernel-dkms" if is_open else "nvidia-kernel-dkms"]
        userspace = ["nvidia-smi", "libnvidia-ml1", "libcuda1", "nvidia-persistenced", "nvidia-cuda-mps"]
        fabricmanager = []
        components = ["contrib", "non-free", "non-free-firmware"]
    elif distro["family"] == "debian":
        kernel = ["nvidia-kernel-open-dkms" if is_open else "nvidia-kernel-dkms"]
        userspace = ["nvidia-driver-cuda", "nvidia-persistenced"]
        fabricmanager = ["nvidia-fabricmanager-%s" % branch, "libnvidia-nscq-%s" % branch]
        components = []
    else:
        suffix = "-server" if source == "distribution" else ""
        flavor_suffix = "-open" if is_open else ""
        kernel = ["nvidia-dkms-%s%s%s" % (branch, suffix, flavor_suffix)]
        userspace = ["nvidia-headless-no-dkms-%s%s%s" % (branch, suffix, flavor_suffix),
                     "libnvidia-compute-%s%s" % (branch, suffix),
                     "nvidia-utils-%s%s" % (branch, suffix),
                     "nvidia-compute-utils-%s%s" % (branch, suffix)]
        fabricmanager = ["nvidia-fabricmanager-%s" % branch, "libnvidia-nscq-%s" % branch]
        components = ["restricted", "multiverse"] if source == "distribution" else []
    repository = None
    if source == "cuda":
        name = _cuda_repo_name(distro)
        uri = "%s/%s/%s/" % (CUDA_REPO_BASE, name, distro["cuda_arch"])
        repository = {"kind": "apt", "name": "nvidia-cuda", "uris": uri, "suites": "/", "key": uri + CUDA_APT_KEY}
    pin = None
    if request["version"]:
        pin = {"packages": APT_PIN_PACKAGES, "version": "%s-*" % request["version"]}
    elif source == "cuda":
        # NVIDIA's repository carries every branch: pin the requested one, or apt takes the newest.
        pin = {"packages": APT_PIN_PACKAGES, "version": "%s.*" % branch}
    return {
        "package_manager": "apt",
        "components": components,
        "repository": repository,
        "apt_pin": pin,
        "module_stream": None,
        "kernel_packages": kernel,
        "userspace_packages": userspace,
        "fabricmanager_packages": fabricmanager,
        "build_packages": ["dkms"],
        "version_package": kernel[0],
        # Debian renames the module files (nvidia-current[-open].ko); modprobe options name the file's module
        "kernel_module_name": (("nvidia-current-open" if is_open else "nvidia-current")
                               if distro["family"] == "debian" and source == "distribution" else "nvidia"),
        "persistenced_binary": "/usr/bin/nvidia-persistenced",
        "mps_control_binary": "/usr/bin/nvidia-cuda-mps-control",
        "nvml_package": "python3-pynvml",
        "initramfs_command": ["/usr/sbin/update-initramfs", "-u", "-k", "all"],
        "hold_packages": kernel + userspace + fabricmanager,
    }


def _redhat_family(distro, request, flavor, fabricmanager):
    branch, version = request["branch"], request["version"]
    stream = "%s-%s" % (branch, "open" if flavor == "open" else "dkms")
    kmod = "kmod-nvidia-open-dkms" if flavor == "open" else "kmod-nvidia-latest-dkms"
    name = _cuda_repo_name(distro)
    uri = "%s/%s/%s" % (CUDA_REPO_BASE, name, distro["cuda_arch"])
    pinned = (lambda package: "%s-%s" % (package, version)) if version else (lambda package: package)
    kernel = ["@nvidia-driver:%s/%s" % (stream, "fm" if fabricmanager else "default")]
    if version:
        kernel += [pinned("nvidia-driver"), pinned(kmod)]
    return {
        "package_manager": "dnf",
        "components": [],
        "repository": {"kind": "dnf", "name": "cuda-%s-%s" % (name, distro["cuda_arch"]),
                       "baseurl": uri, "key": "%s/%s" % (uri, CUDA_RPM_KEY)},
        "apt_pin": None,
        "module_stream": {"name": "nvidia-driver", "stream": stream},
        "kernel_packages": kernel,
        "userspace_packages": [pinned("nvidia-driver-cuda"), pinned("nvidia-persistenced")],
        "fabricmanager_packages": ["nvidia-fabric-manager", "libnvidia-nscq"],
        "build_packages": ["dkms"],
        "version_package": kmod,
        "kernel_module_name": "nvidia",
        "persistenced_binary": "/usr/bin/nvidia-persistenced",
        "mps_control_binary": "/usr/bin/nvidia-cuda-mps-control",
        "nvml_package": None,
        "initramfs_command": ["/usr/bin/dracut", "--regenerate-all", "--force"],
        "hold_packages": ["nvidia-driver", kmod, "nvidia-driver-cuda", "nvidia-persistenced"]
        + (["nvidia-fabric-manager", "libnvidia-nscq"] if fabricmanager else []),
    }


def select_packages(distro, request, hardware):
    """The install plan for `request` (checked options, branch resolved) on `distro` with `hardware`.

    Raises GpuopsError for a request the distribution cannot satisfy, naming what is valid.
    """
    source = request["source"]
    if distro["family"] == "redhat" and source == "distribution":
        source = "cuda"  # RHEL and its rebuilds have no NVIDIA driver of their own
        request = dict(request, source=source)
    branch = request["branch"]
    valid = known_branches(distro, source)
    if branch not in valid:
        where = ("%s's archive" % distro["name"]) if source == "distribution" else "NVIDIA's CUDA repository"
        raise GpuopsError("driver branch %s is not available from %s; valid: %s. List what the repository offers "
                          "with: %s" % (branch, where, ", ".join(valid), list_branches_hint(distro, source)),
                          kind="unknown_branch", details={"valid_branches": list(valid)})
    flavor, reason = kernel_modules_for(distro, request, hardware["gpus"])
    wants_fabricmanager = request["fabricmanager"] == "install" or (
        request["fabricmanager"] == "auto" and bool(hardware["nvswitches"]))
    if distro["family"] == "redhat":
        plan = _redhat_family(distro, request, flavor, wants_fabricmanager)
    else:
        plan = _apt_family(distro, request, flavor)
    if wants_fabricmanager and not plan["fabricmanager_packages"]:
        why = ("NVSwitches are on the PCI bus (%s)" % ", ".join(s["bus_id"] for s in hardware["nvswitches"])
               if hardware["nvswitches"] else "driver_fabricmanager is install")
        raise GpuopsError("%s, but nvidia-fabricmanager is not in %s's archive: set driver_source: cuda (NVIDIA's "
                          "repository has it, at the driver's version)" % (why, distro["name"]),
                          kind="unsupported_source")
    if not wants_fabricmanager:
        plan["hold_packages"] = [p for p in plan["hold_packages"] if p not in plan["fabricmanager_packages"]]
        plan["fabricmanager_packages"] = []
    extra = list(request.get("extra_packages") or [])
    plan.update({
        "family": distro["family"],
        "source": source,
        "branch": branch,
        "version": request["version"],
        "kernel_modules": flavor,
        "kernel_modules_reason": reason,
        "fabricmanager": wants_fabricmanager,
        "fabricmanager_service": "nvidia-fabricmanager.service" if wants_fabricmanager else None,
        "header_packages": _headers(distro, hardware["kernels"]),
        "extra_packages": extra,
        "list_branches": list_branches_hint(distro, source),
    })
    return plan
