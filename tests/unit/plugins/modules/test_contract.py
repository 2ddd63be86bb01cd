# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The contract every module shares: one selector, one failure payload, one missing-pynvml answer."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.gpuops.nvidia.plugins.module_utils import _contract
from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError, check_options
from ansible_collections.gpuops.nvidia.plugins.modules import (
    nvidia_gpu_info,
    nvidia_mig,
    nvidia_mps,
    nvidia_persistence,
)

# Arguments that make each module reach NVML.
NEEDS_NVML = {
    "nvidia_gpu_info": {},
    "nvidia_persistence": {"state": "enabled"},
    "nvidia_mig": {"mode": "enabled"},
    "nvidia_mps": {"devices": ["0"], "pipe_directory": "/nonexistent/p", "log_directory": "/nonexistent/l",
                   "binary": "/bin/true"},
}

WITHOUT_PYNVML = r"""
import sys
sys.modules["pynvml"] = None
from ansible.module_utils.testing import patch_module_args
from ansible_collections.gpuops.nvidia.plugins.modules import {module}
with patch_module_args({args!r}):
    {module}.main()
"""


@pytest.mark.parametrize("module", sorted(NEEDS_NVML))
def test_every_module_reports_missing_pynvml_the_same_way(module):
    args = dict(NEEDS_NVML[module], _ansible_check_mode=True)
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PYNVML.format(module=module, args=args)],
                          capture_output=True, text=True, env=dict(os.environ), check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1 and result["failed"], result
    assert result["error_kind"] == "pynvml_missing"
    assert "nvidia-ml-py" in result["msg"] and "requirements.txt" in result["msg"]


@pytest.mark.parametrize("module,args", [
    (nvidia_gpu_info, {}),
    (nvidia_persistence, {"state": "enabled"}),
    (nvidia_mig, {"mode": "enabled"}),
    (nvidia_mps, {"devices": ["0"], "compute_mode": "keep"}),
])
def test_every_module_returns_nvml_code_where_nvml_answered(sim, run, tmp_path, module, args):
    sim.create("h100-80gb:1")
    sim.fault("nvmlDeviceGetCount_v2", call=1, code=999)
    if module is nvidia_mps:
        args = dict(args, pipe_directory=str(tmp_path / "p"), log_directory=str(tmp_path / "l"), binary="/bin/true")
    result = run(module, args, check_mode=True)
    assert result.failed
    assert result["error_kind"] == "nvml" and result["nvml_code"] == 999, result


@pytest.mark.parametrize("module,args", [
    (nvidia_gpu_info, {"devices": [7]}),
    (nvidia_persistence, {"devices": [7]}),
    (nvidia_mig, {"mode": "enabled", "devices": [7]}),
    (nvidia_mps, {"devices": ["7"], "compute_mode": "keep"}),
])
def test_every_module_names_the_gpus_for_a_bad_selector(sim, run, tmp_path, module, args):
    sim.create("h100-80gb:2")
    if module is nvidia_mps:
        args = dict(args, pipe_directory=str(tmp_path / "p"), log_directory=str(tmp_path / "l"), binary="/bin/true")
    result = run(module, args, check_mode=True)
    assert result.failed and result["error_kind"] == "invalid_selection"
    assert "no GPU with index 7" in result["msg"] and "GPUs on this host: 0 = " in result["msg"]
    assert "nvml_code" not in result


@pytest.mark.parametrize("module,args", [
    (nvidia_gpu_info, {"device_filter": ["0xZZZ"]}),
    (nvidia_persistence, {"device_filter": ["0xZZZ"]}),
    (nvidia_mig, {"mode": "enabled", "device_filter": ["0xZZZ"]}),
    (nvidia_mps, {"device_filter": ["0xZZZ"], "compute_mode": "keep"}),
])
def test_every_module_refuses_a_bad_device_filter(sim, run, tmp_path, module, args):
    sim.create("h100-80gb:1")
    if module is nvidia_mps:
        args = dict(args, pipe_directory=str(tmp_path / "p"), log_directory=str(tmp_path / "l"), binary="/bin/true")
    result = run(module, args, check_mode=True)
    assert result.failed and result["error_kind"] == "invalid_selection"
    assert "0x233010DE" in result["msg"] and "'0xZZZ'" in result["msg"]


def test_every_module_declares_the_one_selector():
    for spec in (nvidia_gpu_info, nvidia_persistence, nvidia_mig, nvidia_mps):
        module_spec = _module_spec(spec)
        for name, option in _contract.SELECTOR_SPEC.items():
            assert module_spec[name] == option, (spec.__name__, name)


def _module_spec(module):
    captured = {}
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _module

    def fake(*specs, **kwargs):
        captured.update(_contract.argument_spec(*specs))
        raise SystemExit(0)

    original = _module.new_module
    module.new_module = fake
    try:
        module.main()
    except SystemExit:
        pass
    finally:
        module.new_module = original
    return captured


def test_check_options_names_every_problem_and_what_is_valid():
    spec = {"state": {"type": "str", "choices": ["started", "stopped"], "default": "started"},
            "timeout": {"type": "int", "default": 15}, "flag": {"type": "bool", "default": False}}
    with pytest.raises(GpuopsError) as error:
        check_options(spec, {"state": "running", "timeout": "soon", "colour": "red"}, where="mps instance a")
    message = error.value.message
    assert error.value.kind == "invalid_argument"
    assert message.startswith("mps instance a: unknown option(s) colour; valid options: flag, state, timeout")
    assert "state: 'running' is not one of started, stopped" in message
    assert "timeout must be a whole number, got 'soon'" in message
    assert check_options(spec, {"flag": "yes", "timeout": "20"}) == {"state": "started", "timeout": 20, "flag": True}
