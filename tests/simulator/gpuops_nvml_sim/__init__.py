"""NVML simulator: simulated NVIDIA GPUs underneath the real pynvml.

`install()` points `pynvml.nvmlLib` at a `SimulatedLibrary`, so every pynvml function runs its own ctypes
code against simulated GPUs whose state lives in a JSON file shared by all processes of a test node.
"""

from __future__ import annotations

from .library import SimulatedLibrary
from .state import (
    DEFAULT_STATE_PATH,
    STATE_ENV,
    SimulatorError,
    StateStore,
    configured_state_path,
    new_state,
    parse_gpu_spec,
)

__all__ = [
    "DEFAULT_STATE_PATH", "STATE_ENV", "SimulatedLibrary", "SimulatorError", "StateStore",
    "activate_from_environment", "configured_state_path", "install", "new_state", "parse_gpu_spec",
    "uninstall",
]


def install(state_path=None):
    """Replace the native NVML library under pynvml with the simulator bound to `state_path`."""
    import pynvml

    path = state_path or configured_state_path()
    if not path:
        raise SimulatorError("no simulator state: set %s or create %s" % (STATE_ENV, DEFAULT_STATE_PATH))
    library = SimulatedLibrary(path)
    with pynvml.libLoadLock:
        pynvml.nvmlLib = library
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlLib_refcount = 0
    return library


def uninstall():
    import pynvml

    with pynvml.libLoadLock:
        pynvml.nvmlLib = None
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlLib_refcount = 0


def activate_from_environment():
    """Called by the .pth hook at interpreter start: a no-op unless a state file is configured."""
    if not configured_state_path():
        return
    try:
        install()
    except ImportError:
        pass
