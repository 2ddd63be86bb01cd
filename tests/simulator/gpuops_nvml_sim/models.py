"""GPU models the simulator can present.

H100 80GB HBM3 is copied from a capture of a real GPU (tests/fixtures/h100-80gb-hbm3/nvml.json);
the other models follow the MIG tables of the MIG User Guide and public `nvidia-smi mig -lgip` captures
(docs/simulator.md says which numbers are measured and which are derived).
"""

from __future__ import annotations

ARCH_AMPERE = 7
ARCH_ADA = 8
ARCH_HOPPER = 9

# GPU-instance profile index constants (NVML_GPU_INSTANCE_PROFILE_*).
GI_1_SLICE = 0
GI_2_SLICE = 1
GI_3_SLICE = 2
GI_4_SLICE = 3
GI_7_SLICE = 4
GI_1_SLICE_REV1 = 7
GI_2_SLICE_REV1 = 8
GI_1_SLICE_REV2 = 9
GI_PROFILE_COUNT = 0x12
# Indices that driver 580 answers with InvalidArgument rather than NotSupported (seen on H100).
GI_INVALID_INDICES = frozenset([0x11])

# Compute-instance profile index -> compute slices, and which CI sizes a GI of N slices offers.
CI_PROFILE_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6}
CI_PROFILE_COUNT = 9
CI_SIZES_FOR_GI = {1: (1,), 2: (1, 2), 3: (1, 2, 3), 4: (1, 2, 4), 6: (1, 2, 3, 6), 7: (1, 2, 3, 4, 7), 8: (1, 2, 4, 8)}


def _gi(index, profile_id, name, slices, count, sms, engines, ofa, memory_mb, starts, size):
    copy_engines, decoders, jpegs = engines
    return {
        "index": index,
        "id": profile_id,
        "name": "MIG " + name,
        "isP2pSupported": 0,
        "sliceCount": slices,
        "instanceCount": count,
        "multiprocessorCount": sms,
        "copyEngineCount": copy_engines,
        "decoderCount": decoders,
        "encoderCount": 0,
        "jpegCount": jpegs,
        "ofaCount": ofa,
        "memorySizeMB": memory_mb,
        "placements": [[start, size] for start in starts],
    }


_SEVEN = list(range(7))

MODELS = {
    "h100-80gb": {
        "name": "NVIDIA H100 80GB HBM3",
        "pci_device_id": 0x233010DE,
        "pci_subsystem_id": 0x16C110DE,
        "memory_total": 85520809984,
        "memory_reserved": 503316480,
        "cuda_cc": [9, 0],
        "architecture": ARCH_HOPPER,
        "board_part_number": "692-2G520-0200-500",
        "power_limit_mw": 700000,
        "mig_mode_change": "immediate",
        "memory_slices": 8,
        "max_mig_devices": 7,
        "gi_profiles": [
            _gi(GI_1_SLICE, 19, "1g.10gb", 1, 7, 16, (1, 1, 1), 0, 9984, _SEVEN, 1),
            _gi(GI_2_SLICE, 14, "2g.20gb", 2, 3, 32, (2, 2, 2), 0, 20096, [0, 2, 4], 2),
            _gi(GI_3_SLICE, 9, "3g.40gb", 3, 2, 60, (3, 3, 3), 0, 40448, [0, 4], 4),
            _gi(GI_4_SLICE, 5, "4g.40gb", 4, 1, 64, (4, 4, 4), 0, 40448, [0], 4),
            _gi(GI_7_SLICE, 0, "7g.80gb", 7, 1, 132, (8, 7, 7), 1, 81152, [0], 8),
            _gi(GI_1_SLICE_REV1, 20, "1g.10gb+me", 1, 1, 16, (1, 1, 1), 1, 9984, _SEVEN, 1),
            _gi(GI_1_SLICE_REV2, 15, "1g.20gb", 1, 4, 26, (1, 1, 1), 0, 20096, [0, 2, 4, 6], 2),
        ],
    },
    "h200-141gb": {
        "name": "NVIDIA H200",
        "pci_device_id": 0x233510DE,
        "pci_subsystem_id": 0x18B010DE,
        "memory_total": 150754820096,
        "memory_reserved": 566231040,
        "cuda_cc": [9, 0],
        "architecture": ARCH_HOPPER,
        "board_part_number": "692-2G520-0280-000",
        "power_limit_mw": 700000,
        "mig_mode_change": "immediate",
        "memory_slices": 8,
        "max_mig_devices": 7,
        "gi_profiles": [
            _gi(GI_1_SLICE, 19, "1g.18gb", 1, 7, 16, (1, 1, 1), 0, 16384, _SEVEN, 1),
            _gi(GI_2_SLICE, 14, "2g.35gb", 2, 3, 32, (2, 2, 2), 0, 33280, [0, 2, 4], 2),
            _gi(GI_3_SLICE, 9, "3g.71gb", 3, 2, 60, (3, 3, 3), 0, 71936, [0, 4], 4),
            _gi(GI_4_SLICE, 5, "4g.71gb", 4, 1, 64, (4, 4, 4), 0, 71936, [0], 4),
            _gi(GI_7_SLICE, 0, "7g.141gb", 7, 1, 132, (8, 7, 7), 1, 143360, [0], 8),
            _gi(GI_1_SLICE_REV1, 20, "1g.18gb+me", 1, 1, 16, (1, 1, 1), 1, 16384, _SEVEN, 1),
            _gi(GI_1_SLICE_REV2, 15, "1g.35gb", 1, 4, 26, (1, 1, 1), 0, 33280, [0, 2, 4, 6], 2),
        ],
    },
    "a100-40gb": {
        "name": "NVIDIA A100-SXM4-40GB",
        "pci_device_id": 0x20B010DE,
        "pci_subsystem_id": 0x134F10DE,
        "memory_total": 42949672960,
        "memory_reserved": 450887680,
        "cuda_cc": [8, 0],
        "architecture": ARCH_AMPERE,
        "board_part_number": "692-2G506-0200-002",
        "power_limit_mw": 400000,
        "mig_mode_change": "reset",
        "memory_slices": 8,
        "max_mig_devices": 7,
        "gi_profiles": [
            _gi(GI_1_SLICE, 19, "1g.5gb", 1, 7, 14, (1, 0, 0), 0, 4864, _SEVEN, 1),
            _gi(GI_2_SLICE, 14, "2g.10gb", 2, 3, 28, (2, 1, 0), 0, 9856, [0, 2, 4], 2),
            _gi(GI_3_SLICE, 9, "3g.20gb", 3, 2, 42, (3, 2, 0), 0, 19968, [0, 4], 4),
            _gi(GI_4_SLICE, 5, "4g.20gb", 4, 1, 56, (4, 2, 0), 0, 19968, [0], 4),
            _gi(GI_7_SLICE, 0, "7g.40gb", 7, 1, 98, (7, 5, 1), 1, 40192, [0], 8),
            _gi(GI_1_SLICE_REV1, 20, "1g.5gb+me", 1, 1, 14, (1, 1, 1), 1, 4864, _SEVEN, 1),
            _gi(GI_1_SLICE_REV2, 15, "1g.10gb", 1, 4, 14, (1, 1, 0), 0, 9856, [0, 2, 4, 6], 2),
        ],
    },
    "a100-80gb": {
        "name": "NVIDIA A100-SXM4-80GB",
        "pci_device_id": 0x20B210DE,
        "pci_subsystem_id": 0x147F10DE,
        "memory_total": 85899345920,
        "memory_reserved": 450887680,
        "cuda_cc": [8, 0],
        "architecture": ARCH_AMPERE,
        "board_part_number": "692-2G506-0210-002",
        "power_limit_mw": 400000,
        "mig_mode_change": "reset",
        "memory_slices": 8,
        "max_mig_devices": 7,
        "gi_profiles": [
            _gi(GI_1_SLICE, 19, "1g.10gb", 1, 7, 14, (1, 0, 0), 0, 9728, _SEVEN, 1),
            _gi(GI_2_SLICE, 14, "2g.20gb", 2, 3, 28, (2, 1, 0), 0, 19968, [0, 2, 4], 2),
            _gi(GI_3_SLICE, 9, "3g.40gb", 3, 2, 42, (3, 2, 0), 0, 40192, [0, 4], 4),
            _gi(GI_4_SLICE, 5, "4g.40gb", 4, 1, 56, (4, 2, 0), 0, 40192, [0], 4),
            _gi(GI_7_SLICE, 0, "7g.80gb", 7, 1, 98, (7, 5, 1), 1, 80896, [0], 8),
            _gi(GI_1_SLICE_REV1, 20, "1g.10gb+me", 1, 1, 14, (1, 1, 1), 1, 9728, _SEVEN, 1),
            _gi(GI_1_SLICE_REV2, 15, "1g.20gb", 1, 4, 14, (1, 1, 0), 0, 19968, [0, 2, 4, 6], 2),
        ],
    },
    "a30": {
        "name": "NVIDIA A30",
        "pci_device_id": 0x20B710DE,
        "pci_subsystem_id": 0x153210DE,
        "memory_total": 25769803776,
        "memory_reserved": 320864256,
        "cuda_cc": [8, 0],
        "architecture": ARCH_AMPERE,
        "board_part_number": "900-21001-0040-100",
        "power_limit_mw": 165000,
        "mig_mode_change": "reset",
        "memory_slices": 4,
        "max_mig_devices": 4,
        "gi_profiles": [
            _gi(GI_1_SLICE, 14, "1g.6gb", 1, 4, 14, (1, 0, 0), 0, 5952, [0, 1, 2, 3], 1),
            _gi(GI_2_SLICE, 5, "2g.12gb", 2, 2, 28, (2, 1, 1), 0, 11968, [0, 2], 2),
            _gi(GI_4_SLICE, 0, "4g.24gb", 4, 1, 56, (4, 4, 4), 1, 24000, [0], 4),
            _gi(GI_1_SLICE_REV1, 21, "1g.6gb+me", 1, 1, 14, (1, 1, 1), 1, 5952, [0, 1, 2, 3], 1),
            _gi(GI_2_SLICE_REV1, 6, "2g.12gb+me", 2, 1, 28, (2, 2, 2), 1, 11968, [0, 2], 2),
        ],
    },
    "l4": {
        "name": "NVIDIA L4",
        "pci_device_id": 0x27B810DE,
        "pci_subsystem_id": 0x16CA10DE,
        "memory_total": 24152899584,
        "memory_reserved": 351272960,
        "cuda_cc": [8, 9],
        "architecture": ARCH_ADA,
        "board_part_number": "900-2G193-0000-000",
        "power_limit_mw": 72000,
        "mig_mode_change": None,
        "memory_slices": 0,
        "max_mig_devices": 0,
        "gi_profiles": [],
    },
}


# NVLink and the NVLink fabric, per model (added to MODELS below; docs/simulator.md, "NVLink and the fabric"):
# - nvlink_links: NVLink links the GPU has (nvmlDeviceGetNvLinkState answers links 0..n-1; L4 has none).
#   H100/H200 SXM5 18 (NVLink 4), A100 SXM4 12 (NVLink 3), A30 4 (NVLink 3 bridge): NVIDIA datasheets.
# - fabric_info: nvmlDeviceGetGpuFabricInfo(V) answers (NVML documents it for Hopper or newer); older GPUs get
#   NOT_SUPPORTED, NVSwitch board or not.
# - nvswitch_board: the SXM part that sits on an HGX/DGX board behind NVSwitches (`create --nvswitch`).
NVLINK = {
    "h100-80gb": {"nvlink_links": 18, "fabric_info": True, "nvswitch_board": True},
    "h200-141gb": {"nvlink_links": 18, "fabric_info": True, "nvswitch_board": True},
    "a100-40gb": {"nvlink_links": 12, "fabric_info": False, "nvswitch_board": True},
    "a100-80gb": {"nvlink_links": 12, "fabric_info": False, "nvswitch_board": True},
    "a30": {"nvlink_links": 4, "fabric_info": False, "nvswitch_board": False},
    "l4": {"nvlink_links": 0, "fabric_info": False, "nvswitch_board": False},
}
for _name, _nvlink in NVLINK.items():
    MODELS[_name].update(_nvlink)


def model(name):
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError("unknown GPU model %r; known models: %s" % (name, ", ".join(sorted(MODELS))))


def mig_capable(spec):
    return bool(spec["gi_profiles"])


def gi_profile_by_index(spec, index):
    for profile in spec["gi_profiles"]:
        if profile["index"] == index:
            return profile
    return None


def gi_profile_by_id(spec, profile_id):
    for profile in spec["gi_profiles"]:
        if profile["id"] == profile_id:
            return profile
    return None


def ci_profile(gi_profile, ci_index):
    """Compute-instance profile `ci_index` inside a GI of `gi_profile`, or None when the GI lacks it."""
    slices = CI_PROFILE_SLICES.get(ci_index)
    gi_slices = gi_profile["sliceCount"]
    if slices is None or slices not in CI_SIZES_FOR_GI.get(gi_slices, ()):
        return None
    gi_name = gi_profile["name"][len("MIG "):]
    name = gi_name if slices == gi_slices else "%dc.%s" % (slices, gi_name)
    share = float(slices) / gi_slices
    return {
        "id": ci_index,
        "sliceCount": slices,
        "instanceCount": gi_slices // slices,
        "multiprocessorCount": int(gi_profile["multiprocessorCount"] * share),
        "sharedCopyEngineCount": gi_profile["copyEngineCount"],
        "sharedDecoderCount": gi_profile["decoderCount"],
        "sharedEncoderCount": gi_profile["encoderCount"],
        "sharedJpegCount": gi_profile["jpegCount"],
        "sharedOfaCount": gi_profile["ofaCount"],
        "name": "MIG " + name,
        "placements": [[start, slices] for start in range(0, gi_slices - slices + 1, slices)],
    }
