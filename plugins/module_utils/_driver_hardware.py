# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the driver engine reads on the node without a driver: PCI devices, the loaded module, kernels.

Plain Python: no Ansible imports. Everything is read from files (sysfs, /proc, /boot, /lib/modules), so it works
before any NVIDIA driver is installed; `sysfs_root` is the test seam (a fake tree with the same layout).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

NVIDIA_VENDOR = 0x10DE
# PCI classes (class code >> 8): VGA and 3D controllers are GPUs, "other bridge" is how NVSwitches enumerate.
GPU_CLASSES = (0x0300, 0x0302)
NVSWITCH_CLASS = 0x0680

# Device-id ranges of NVIDIA's GPU generations (pci.ids). Every Turing or newer GPU has a device id of 0x1E00 or
# more, every older one less: the open kernel modules support exactly the former.
_ARCHITECTURES = (
    (0x0000, 0x0FBF, "pre-kepler"),
    (0x0FC0, 0x12FF, "kepler"),
    (0x1300, 0x15EF, "maxwell"),
    (0x15F0, 0x15FF, "pascal"),
    (0x1600, 0x17FF, "maxwell"),
    (0x1800, 0x1D7F, "pascal"),
    (0x1D80, 0x1DFF, "volta"),
    (0x1E00, 0x1FFF, "turing"),
    (0x2000, 0x20FF, "ampere"),
    (0x2100, 0x21FF, "turing"),
    (0x2200, 0x22FF, "ampere"),
    (0x2300, 0x23FF, "hopper"),
    (0x2400, 0x25FF, "ampere"),
    (0x2600, 0x28FF, "ada"),
    (0x2900, 0x2FFF, "blackwell"),
)
TURING_FIRST_DEVICE_ID = 0x1E00
# Grace Hopper (GH200) and every Blackwell GPU are supported by the open kernel modules only.
_OPEN_ONLY_DEVICE_IDS = (0x2342, 0x2348)
BLACKWELL_FIRST_DEVICE_ID = 0x2900

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (IOError, OSError, UnicodeDecodeError):
        return None


def _hex(path):
    value = read_text(path)
    try:
        return int(value, 16) if value else None
    except ValueError:
        return None


def architecture(device_id):
    for first, last, name in _ARCHITECTURES:
        if first <= device_id <= last:
            return name
    return "unknown"


def open_modules_support(device_id):
    """(`supported`, `required`) for NVIDIA's open kernel modules on a GPU with this PCI device id."""
    required = device_id >= BLACKWELL_FIRST_DEVICE_ID or device_id in _OPEN_ONLY_DEVICE_IDS
    return device_id >= TURING_FIRST_DEVICE_ID, required


def pci_devices(sysfs_root="/sys"):
    """NVIDIA GPUs and NVSwitches on the PCI bus: {"gpus": [...], "nvswitches": [...]}, sorted by bus id.

    Read from `<sysfs_root>/bus/pci/devices/*/{vendor,device,class,subsystem_*}`; no driver is needed.
    """
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    gpus, nvswitches = [], []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    for bus_id in names:
        path = os.path.join(base, bus_id)
        if _hex(os.path.join(path, "vendor")) != NVIDIA_VENDOR:
            continue
        device_id = _hex(os.path.join(path, "device"))
        pci_class = _hex(os.path.join(path, "class"))
        if device_id is None or pci_class is None:
            continue
        subsystem = (_hex(os.path.join(path, "subsystem_device")), _hex(os.path.join(path, "subsystem_vendor")))
        entry = {
            "bus_id": bus_id,
            "device_id": "0x%04X" % device_id,
            # mig-parted's / the collection's selector form: device id, then vendor id
            "pci_device_id": "0x%04X%04X" % (device_id, NVIDIA_VENDOR),
            "subsystem_id": ("0x%04X%04X" % subsystem) if None not in subsystem else None,
            "driver": os.path.basename(os.path.realpath(os.path.join(path, "driver")))
            if os.path.exists(os.path.join(path, "driver")) else None,
        }
        if (pci_class >> 8) in GPU_CLASSES:
            supported, required = open_modules_support(device_id)
            entry.update({"architecture": architecture(device_id), "open_modules_supported": supported,
                          "open_modules_required": required})
            gpus.append(entry)
        elif (pci_class >> 8) == NVSWITCH_CLASS:
            nvswitches.append(entry)
    return {"gpus": gpus, "nvswitches": nvswitches}


def branch_of(version):
    """`580` for `580.95.05`; None for anything that is not a driver version."""
    match = _VERSION.match(str(version or "").strip())
    return match.group(1) if match else None


def loaded_driver(sysfs_root="/sys", proc_version="/proc/driver/nvidia/version"):
    """The NVIDIA kernel module in the running kernel: {version, branch, kernel_modules} or None.

    `kernel_modules` is `open` or `proprietary` from /proc/driver/nvidia/version when the driver publishes it
    there, else None.
    """
    version = read_text(os.path.join(sysfs_root, "module", "nvidia", "version"))
    if not version:
        return None
    banner = read_text(proc_version) or ""
    flavor = None
    if "NVIDIA UNIX" in banner:
        flavor = "open" if "Open Kernel Module" in banner else "proprietary"
    return {"version": version, "branch": branch_of(version), "kernel_modules": flavor}


def _version_key(text):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def kernels(boot_dir="/boot", modules_dir="/lib/modules", running=None):
    """Kernels on the node: {running, installed (sorted, oldest first), boot}.

    A kernel is installed when its image is in /boot (vmlinuz-<release>) and its modules in /lib/modules/<release>.
    `boot` is the newest installed kernel (what a Debian/Ubuntu/EL boot loader defaults to); None when the node has
    no kernel of its own (a container runs its host's kernel).
    """
    running = running or os.uname()[2]
    installed = []
    try:
        for name in os.listdir(boot_dir):
            if name.startswith("vmlinuz-"):
                release = name[len("vmlinuz-"):]
                if os.path.isdir(os.path.join(modules_dir, release)):
                    installed.append(release)
    except OSError:
        pass
    installed.sort(key=_version_key)
    return {"running": running, "installed": installed, "boot": installed[-1] if installed else None}


_NVIDIA_MODULE_FILE = re.compile(r"^(?P<path>\S*/(nvidia|nvidia-current|nvidia-current-open)\.ko(\.[a-z]+)?):")


def nvidia_module_file(release, modules_dir="/lib/modules"):
    """Path of the nvidia kernel module that `modprobe nvidia` would load on kernel `release`, or None.

    From the kernel's modules.dep (written by depmod after DKMS, kmod packages or the .run installer put the
    module in place); Debian names its module nvidia-current.
    """
    dep = os.path.join(modules_dir, release, "modules.dep")
    try:
        with open(dep) as handle:
            for line in handle:
                match = _NVIDIA_MODULE_FILE.match(line)
                if match:
                    path = match.group("path")
                    return path if path.startswith("/") else os.path.join(modules_dir, release, path)
    except (IOError, OSError):
        return None
    return None


def in_container(environ_path="/proc/1/environ", marker="/run/systemd/container"):
    """True inside a container (systemd's marker file, or `container=` in PID 1's environment)."""
    if read_text(marker):
        return True
    try:
        with open(environ_path, "rb") as handle:
            return any(item.startswith(b"container=") for item in handle.read().split(b"\0"))
    except (IOError, OSError):
        return os.path.exists("/.dockerenv")


def os_release(path="/etc/os-release"):
    """/etc/os-release as a dict (ID, VERSION_ID, VERSION_CODENAME, ID_LIKE, ...)."""
    result = {}
    text = read_text(path) or ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            result[key.strip()] = value.strip().strip("\"'")
    return result
