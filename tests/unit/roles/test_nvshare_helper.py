# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""roles/nvshare/files/gpuops_nvshare_helper.py (nvshare-scheduler@.service's ExecStartPost and ExecReload).

nvsharectl is a script under a temporary prefix that records its argv and answers like the real one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.join(HERE, "..", "..", "..", "roles", "nvshare", "files", "gpuops_nvshare_helper.py")

NVSHARECTL = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
if [ -e "$(dirname "$0")/down" ]; then
    echo "[NVSHARE][FATAL]: nvshare_connect() failed" >&2
    exit 1
fi
echo "[NVSHARE][INFO]: Successfully set the nvshare-scheduler TQ to $4 seconds." >&2
"""


@pytest.fixture
def helper(monkeypatch, tmp_path):
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    ctl = prefix / "bin" / "nvsharectl"
    ctl.write_text(NVSHARECTL)
    ctl.chmod(ctl.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("GPUOPS_NVSHARE_SOCKET_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("GPUOPS_NVIDIA_LIB", os.environ.get("PYTHONPATH", "").split(os.pathsep)[0])
    spec = importlib.util.spec_from_file_location("gpuops_nvshare_helper", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.tmp, module.prefix = tmp_path, prefix
    return module


def write(helper, **settings):
    desired = {"archive": "https://example.org/nvshare.tar.gz", "archive_checksum": "sha256:" + "ab" * 32,
               "prefix": str(helper.prefix), "timeout": 1}
    desired.update(settings)
    (helper.tmp / "nvshare.json").write_text(json.dumps(desired))


def test_configure_applies_the_settings_and_records_them_with_the_scheduler_pid(helper, capsys):
    write(helper, tq=90, anti_thrash=False)
    assert helper.main(["configure", "GPU-1", "777", str(helper.tmp / "nvshare.json")]) == 0
    out = capsys.readouterr().out
    assert "nvshare-scheduler@GPU-1: applied TQ 90 s and anti-thrash off through" in out
    assert (helper.prefix / "bin" / "calls").read_text() == "-S off -T 90\n"
    record = json.loads((helper.tmp / "run" / "gpuops-applied.json").read_text())
    assert record["pid"] == 777 and record["tq"] == 90 and record["anti_thrash"] == "off"


def test_an_unreachable_scheduler_fails_the_step_with_the_reason(helper, capsys):
    write(helper)
    (helper.prefix / "bin" / "down").write_text("")
    assert helper.main(["configure", "GPU-1", "777", str(helper.tmp / "nvshare.json")]) == 1
    err = capsys.readouterr().err
    assert "nvshare-scheduler@GPU-1: configure: nvsharectl could not apply TQ 30 s" in err
    assert "nvshare_connect() failed" in err and "(scheduler_unreachable)" in err
    assert not (helper.tmp / "run" / "gpuops-applied.json").exists()


def test_a_desired_state_that_fails_the_validator_is_not_applied(helper, capsys):
    write(helper, tq=-1, anti_thrash="maybe")
    assert helper.main(["configure", "GPU-1", "777", str(helper.tmp / "nvshare.json")]) == 1
    err = capsys.readouterr().err
    assert "anti_thrash must be true or false, got 'maybe'" in err
    assert not (helper.prefix / "bin" / "calls").exists()


def test_missing_desired_state_and_usage(helper, capsys):
    assert helper.main(["configure", "GPU-1", "777", str(helper.tmp / "nvshare.json")]) == 1
    assert "nvshare.json" in capsys.readouterr().err
    assert helper.main(["reload", "GPU-1", "777"]) == 2
    assert "usage" in capsys.readouterr().err
