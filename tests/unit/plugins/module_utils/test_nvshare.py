# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_nvshare: the one validator (no NVML) and configure(), the unit's ExecStartPost/ExecReload step."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

import pytest

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvshare import (
    configure,
    nvsharectl_argv,
    read_applied,
    validate,
)

DESIRED = {"archive": "https://example.org/nvshare.tar.gz", "archive_checksum": "sha256:" + "ab" * 32,
           "clients": [{"service": "jupyterhub", "device": 1}]}


def test_validate_normalizes_and_is_idempotent_for_the_helper():
    """The role writes the validated state; the unit's helper validates it again and must get the same."""
    once = validate(DESIRED)
    assert once["clients"] == [{"service": "jupyterhub.service", "device": 1, "single_oversub": None,
                                "restart": False}]
    assert once["devices"] == "all" and once["tq"] == 30 and once["anti_thrash"] is True
    assert validate(json.loads(json.dumps(once))) == once


def test_absent_needs_no_archive():
    assert validate({"state": "absent"})["state"] == "absent"


def test_unknown_options_and_wrong_types_name_what_is_valid():
    with pytest.raises(GpuopsError) as error:
        validate(dict(DESIRED, tq="soon", tqs=3))
    assert "unknown option(s) tqs; valid options: " in error.value.message and "anti_thrash" in error.value.message
    assert "tq must be a whole number, got 'soon'" in error.value.message
    assert error.value.kind == "invalid_argument"


def test_nvsharectl_argv():
    assert nvsharectl_argv("/usr/local/bin/nvsharectl", 45, False) == ["/usr/local/bin/nvsharectl", "-S", "off",
                                                                       "-T", "45"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_configure_waits_for_the_scheduler_then_records_what_it_applied(tmp_path):
    desired = validate(dict(DESIRED, tq=45, anti_thrash=False))
    calls, clock = [], Clock()
    answers = [(1, "", "[NVSHARE][FATAL]: nvshare_connect() failed"),
               (0, "", "[NVSHARE][INFO]: Failed to turn the nvshare-scheduler off."),
               (0, "", "[NVSHARE][INFO]: Successfully turned the nvshare-scheduler off.")]

    def run(argv):
        calls.append(argv)
        return answers.pop(0)

    record = str(tmp_path / "gpuops-applied.json")
    lines = configure(desired, "4242", run, applied_path=record, sleep=clock.sleep, clock=clock.time)
    assert calls == [["/usr/local/bin/nvsharectl", "-S", "off", "-T", "45"]] * 3
    assert read_applied(record) == {"pid": 4242, "tq": 45, "anti_thrash": "off", "applied_at": 1000,
                                    "nvsharectl": ["/usr/local/bin/nvsharectl", "-S", "off", "-T", "45"]}
    assert lines == ["applied TQ 45 s and anti-thrash off through /usr/local/bin/nvsharectl -S off -T 45 "
                     "(scheduler pid 4242)"]


def test_configure_gives_up_after_the_timeout_with_nvsharectls_words(tmp_path):
    desired = validate(dict(DESIRED, timeout=2))
    clock = Clock()

    def run(_argv):
        return 1, "", "[NVSHARE][FATAL]: nvshare_connect() failed"

    with pytest.raises(GpuopsError) as error:
        configure(desired, 1, run, applied_path=str(tmp_path / "a.json"), sleep=clock.sleep, clock=clock.time)
    assert error.value.kind == "scheduler_unreachable"
    assert "could not apply TQ 30 s and anti-thrash on to the scheduler at /var/run/nvshare/scheduler.sock within 2 s" \
        in error.value.message and "nvshare_connect() failed" in error.value.message
    assert not (tmp_path / "a.json").exists()


def test_read_applied_tolerates_garbage(tmp_path):
    path = tmp_path / "x.json"
    assert read_applied(str(path)) is None
    path.write_text("[1, 2]")
    assert read_applied(str(path)) is None
    path.write_text("{")
    assert read_applied(str(path)) is None
