# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The HTML report in a real headless browser (Debian's chromium): it renders, every card and slice drawing is in
the DOM, and the screenshot shows the colours of the drawing and of drift.

`make test` (the unit target) installs chromium when it is missing and sets GPUOPS_REQUIRE_CHROMIUM=1, so there a
missing browser fails the test; elsewhere it is skipped. GPUOPS_REPORT_SCREENSHOT=<png> keeps the screenshot.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report_node import SlurmNode, slurm_desired  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.gpuops.nvidia.plugins.filter import gpu_report as report  # noqa: E402

pytestmark = pytest.mark.usefixtures("mig_lock")

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DRIFT_RED = (0xC0, 0x39, 0x2B)
OK_GREEN = (0x1B, 0x7F, 0x3B)
MIG_3G = (0x21, 0x9E, 0xBC)


def browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("GPUOPS_REQUIRE_CHROMIUM") == "1":
        pytest.fail("no headless browser (%s) on PATH: `make test` installs Debian's chromium" % ", ".join(BROWSERS))
    pytest.skip("no chromium on PATH (make test installs it)")
    return None


def run_browser(path, profile, *args):
    command = [path] + FLAGS + ["--user-data-dir=%s" % profile] + list(args)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, "%s failed (%d): %s" % (" ".join(command), proc.returncode, proc.stderr[-2000:])
    return proc.stdout


def png_pixels(path):
    """(width, height, rows of (r, g, b)) of an 8-bit RGB/RGBA non-interlaced PNG, with the standard library."""
    with open(path, "rb") as handle:
        data = handle.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour, _c, _f, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, channels)])
        previous = line
    return width, height, rows


@pytest.fixture
def fleet(sim, run, tmp_path, monkeypatch):
    """Two real node models of one simulated Slurm node (converged, then drifted) and a host without data."""
    node = SlurmNode(sim, run, tmp_path, monkeypatch)
    try:
        node.converge()
        in_sync = report.node_model(node.gather(), slurm_desired(), host="slurm-gpu-01",
                                    groups=["gpu_nodes", "slurm_gpu_nodes"], simulated=True)
        with sim.edit() as data:
            data["gpus"][3]["persistence_mode"] = 0
        with open(os.path.join(node.pipe_root, "shared", "nvidia-cuda-mps-control.pid")) as handle:
            os.kill(int(handle.read()), signal.SIGKILL)
        drifted = report.node_model(node.gather(), slurm_desired(), host="slurm-gpu-02",
                                    groups=["gpu_nodes", "slurm_gpu_nodes"], simulated=True)
    finally:
        node.stop_all()
    assert (in_sync["status"], drifted["status"]) == ("ok", "drift")
    return [in_sync, drifted]


def test_the_report_renders_in_a_headless_browser(fleet, tmp_path):
    path = browser()
    page = tmp_path / "gpu-report.html"
    page.write_text(report.html_report(fleet, generated="2026-11-23 06:00 UTC", missing=["k8s-gpu-01"]))
    url = "file://%s" % page

    dom = run_browser(path, str(tmp_path / "profile-dom"), "--dump-dom", url)
    assert dom.count('class="node status-') == 3
    for host, status in (("k8s-gpu-01", "unavailable"), ("slurm-gpu-01", "ok"), ("slurm-gpu-02", "drift")):
        assert 'data-host="%s" data-status="%s"' % (host, status) in dom
    assert dom.count('<svg class="slices"') == 16  # one drawing per GPU of the two nodes with data
    assert dom.count('class="gpu drift"') == 3  # slurm-gpu-02: GPU 3 (persistence), GPUs 6 and 7 (MPS shared)
    assert "1 in sync" in dom and "1 drift" in dom and "1 no data" in dom

    shot = tmp_path / "gpu-report.png"
    run_browser(path, str(tmp_path / "profile-shot"), "--hide-scrollbars", "--screenshot=%s" % shot,
                "--window-size=1400,2600", url)
    if os.environ.get("GPUOPS_REPORT_SCREENSHOT"):
        shutil.copyfile(str(shot), os.environ["GPUOPS_REPORT_SCREENSHOT"])
    width, height, rows = png_pixels(str(shot))
    assert (width, height) == (1400, 2600)
    colours = {}
    for row in rows[::2]:
        for pixel in row[::2]:
            colours[pixel] = colours.get(pixel, 0) + 1
    assert len(colours) > 200, "the screenshot is (nearly) blank: %d colours" % len(colours)
    for name, colour in (("drift red", DRIFT_RED), ("in-sync green", OK_GREEN), ("3g MIG slice", MIG_3G)):
        assert colours.get(colour, 0) > 50, "no %s %s in the screenshot" % (name, colour)
