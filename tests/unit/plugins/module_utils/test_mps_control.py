# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The MPS control's reply cache: on only where nothing changes (check mode), and never for commands that act."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuops.nvidia.plugins.module_utils._mps_control import MpsControl


def control_with_log(replies):
    sent = []

    def run(argv, env=None, data=None):
        sent.append(data)
        return 0, replies.get(data.strip(), ""), ""

    return MpsControl("/usr/bin/nvidia-cuda-mps-control", "/run/nvidia-mps/x", "/var/log/nvidia-mps/x", run), sent


def test_without_the_cache_every_question_goes_to_the_daemon():
    control, sent = control_with_log({"get_default_active_thread_percentage": "50.0\n"})
    assert control.get_percentage() == 50.0 and control.get_percentage() == 50.0
    assert len(sent) == 2


def test_with_the_cache_each_get_is_asked_once_and_sets_always_go_through():
    control, sent = control_with_log({"get_default_active_thread_percentage": "50.0\n", "get_server_list": "4242\n"})
    control.cache = {}
    assert control.get_percentage() == 50.0 and control.get_percentage() == 50.0
    assert control.query("get_server_list") == ["4242"] and control.query("get_server_list") == ["4242"]
    control.set_percentage(25)
    control.set_percentage(25)
    assert sent == ["get_default_active_thread_percentage\n", "get_server_list\n",
                    "set_default_active_thread_percentage 25\n", "set_default_active_thread_percentage 25\n"]
