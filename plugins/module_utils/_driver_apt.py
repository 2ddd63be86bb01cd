# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which archive components a Debian/Ubuntu node still lacks for the driver. Plain Python: no Ansible imports.

Reads the node's apt sources in both formats (one-line `.list` and deb822 `.sources`), except the files the role
itself writes, and returns, per archive URI, the suites of the distribution that are configured there and the
components the driver needs that none of those entries enables yet. The role writes one deb822 file per URI with
exactly those: a second run finds them all (in files other than its own), so nothing is added twice.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import glob
import os
import re

ROLE_FILE_PREFIX = "gpuops-driver-"


def _one_line(text):
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        options = {}
        match = re.match(r"^(deb|deb-src)\s+\[([^\]]*)\]\s+(.*)$", line)
        if match:
            kind, rest = match.group(1), match.group(3)
            for item in match.group(2).split():
                key, _sep, value = item.partition("=")
                options[key.lower()] = value
        else:
            kind, _sep, rest = line.partition(" ")
        fields = rest.split()
        if kind != "deb" or len(fields) < 2:
            continue
        entries.append({"uris": [fields[0]], "suites": [fields[1]], "components": fields[2:],
                        "signed_by": options.get("signed-by"), "enabled": True})
    return entries


def _deb822(text):
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += "\n" + line.strip()
                continue
            key, _sep, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        entries.append({"uris": fields.get("uris", "").split(), "suites": fields.get("suites", "").split(),
                        "components": fields.get("components", "").split(),
                        "signed_by": signed_by if signed_by and "\n" not in signed_by else None, "enabled": True})
    return entries


def read_sources(etc_apt="/etc/apt"):
    """Every enabled `deb` entry outside the role's own files: [{uris, suites, components, signed_by}]."""
    paths = [os.path.join(etc_apt, "sources.list")]
    paths += sorted(glob.glob(os.path.join(etc_apt, "sources.list.d", "*.list")))
    paths += sorted(glob.glob(os.path.join(etc_apt, "sources.list.d", "*.sources")))
    entries = []
    for path in paths:
        if os.path.basename(path).startswith(ROLE_FILE_PREFIX):
            continue
        try:
            with open(path) as handle:
                text = handle.read()
        except (IOError, OSError):
            continue
        entries.extend(_deb822(text) if path.endswith(".sources") else _one_line(text))
    return entries


def _file_name(uri):
    return ROLE_FILE_PREFIX + re.sub(r"[^a-z0-9]+", "-", re.sub(r"^[a-z]+://", "", uri.lower())).strip("-")


def missing_components(entries, codename, wanted):
    """[{name, uris, suites, components, signed_by}] for every archive URI that lacks some of `wanted`.

    Only entries that serve the distribution (`main` for a suite named after `codename`) count; the components
    already enabled for a (URI, suite) anywhere are not added again.
    """
    enabled = {}
    signed = {}
    for entry in entries:
        for uri in entry["uris"]:
            for suite in entry["suites"]:
                if suite == codename or suite.startswith(codename + "-"):
                    enabled.setdefault((uri.rstrip("/"), suite), set()).update(entry["components"])
                    if entry["signed_by"]:
                        signed.setdefault(uri.rstrip("/"), entry["signed_by"])
    groups = {}
    for (uri, suite), components in sorted(enabled.items()):
        if "main" not in components:
            continue
        lacking = [c for c in wanted if c not in components]
        if lacking:
            group = groups.setdefault(uri, {"name": _file_name(uri), "uris": uri, "suites": [], "components": [],
                                            "signed_by": signed.get(uri)})
            group["suites"].append(suite)
            group["components"] = [c for c in wanted if c in group["components"] or c in lacking]
    return [groups[uri] for uri in sorted(groups)]
