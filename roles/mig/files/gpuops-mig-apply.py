#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gpuops-mig-apply: apply the MIG layout that the gpuops.nvidia mig role wrote to /etc/gpuops/mig.json.

Run at boot by gpuops-mig-apply.service (GPU and compute instances never survive a reboot, and on Hopper
neither does the MIG mode). It imports the same engine as the nvidia_mig module, from the copy of the
collection's module_utils under /usr/local/lib/gpuops-nvidia, takes the host-wide MIG lock, applies the
layout, logs the plan and the resulting slice maps on stdout (the journal), then re-plans to verify that
nothing is left to do.

    gpuops-mig-apply [--state /etc/gpuops/mig.json] [--lib /usr/local/lib/gpuops-nvidia] [--check]

Exit status: 0 applied (or already in place), 1 the engine refused or failed (its message on stderr),
2 usage or state file error, 3 a MIG mode change still waits for a GPU reset or reboot (layout not applied).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import json
import os
import shutil
import subprocess
import sys

LIB = os.environ.get("GPUOPS_NVIDIA_LIB", "/usr/local/lib/gpuops-nvidia")
STATE = os.environ.get("GPUOPS_MIG_STATE", "/etc/gpuops/mig.json")
PROG = "gpuops-mig-apply"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PENDING = 3


def log(line):
    print(line)
    sys.stdout.flush()


def error(line):
    sys.stderr.write("%s: %s\n" % (PROG, line))
    sys.stderr.flush()


def run_command(argv):
    """(rc, stdout, stderr) of argv (no shell), the contract of Options.run_command."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              check=False)
    except OSError as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def load_state(path):
    with open(path) as handle:
        state = json.load(handle)
    if not isinstance(state, dict) or state.get("version") != 1:
        raise ValueError("%s is not a gpuops mig state file (version 1)" % path)
    return state


def build_targets(engine, session, state):
    """The engine targets for the GPUs that the state selects (layout, or a mig-parted config)."""
    gpus = session.select(state.get("devices", "all"), state.get("device_filter") or None)
    config = state.get("config")
    if config is None:
        return [engine["Target"](gpu, state.get("mode", "enabled"), state.get("layout") or {}) for gpu in gpus]
    mig_config = engine["mig_config"]
    source = state.get("config_source") or "mig-parted config"
    name = state.get("config_name")
    entries = mig_config.select_config(mig_config.validate(config, source), name, source)
    return [engine["Target"](gpu, "enabled" if entry["mig_enabled"] else "disabled", entry["mig_devices"], source=name)
            for gpu, entry in mig_config.targets_for(entries, gpus, name or "config")]


def import_engine(lib):
    sys.path.insert(0, lib)
    # pylint: disable=import-outside-toplevel
    from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_config as mig_config
    from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlError, NvmlSession
    from ansible_collections.gpuops.nvidia.plugins.module_utils._mig import HostLock, MigError, Options, Target, apply
    return {"mig_config": mig_config, "NvmlError": NvmlError, "NvmlSession": NvmlSession, "HostLock": HostLock,
            "MigError": MigError, "Options": Options, "Target": Target, "apply": apply}


def report(result, check):
    steps = result["plan"]
    if not steps:
        log("layout already in place: nothing to do")
    else:
        log("plan (%d step(s))%s:" % (len(steps), ", check mode: nothing changed" if check else ""))
        for step in steps:
            log("  " + step["description"])
    for gpu in result["gpus"]:
        log(gpu["slice_map"]["after"])
        if gpu.get("reset_problem"):
            error("GPU %d: %s" % (gpu["index"], gpu["reset_problem"]))


def pending_text(result):
    gpus = [g for g in result["gpus"] if g["reset_required"] or not g["layout_applied"]]
    if not gpus:
        return None
    return ("the MIG mode change of GPU(s) %s waits for a GPU reset%s; the layout was NOT applied"
            % (", ".join(str(g["index"]) for g in gpus),
               " or a reboot (the reset failed or nvidia-smi is missing)" if result["reboot_required"] else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description="Apply the MIG layout of the gpuops.nvidia mig role.")
    parser.add_argument("--state", default=STATE, help="desired state written by the role (default %(default)s)")
    parser.add_argument("--lib", default=LIB, help="where the engine is installed (default %(default)s)")
    parser.add_argument("--check", action="store_true", help="print the plan, change nothing")
    args = parser.parse_args(argv)

    try:
        state = load_state(args.state)
    except (IOError, OSError, ValueError) as exc:
        error("cannot read the desired MIG state: %s" % exc)
        return EXIT_USAGE
    try:
        engine = import_engine(args.lib)
    except ImportError as exc:
        error("cannot import the MIG engine from %s: %s (run the gpuops.nvidia mig role again)" % (args.lib, exc))
        return EXIT_USAGE

    options = engine["Options"](check_mode=args.check, reset=state.get("reset", "if_needed"),
                                allow_busy_kept_instances=bool(state.get("allow_busy_kept_instances")),
                                run_command=run_command, nvidia_smi=shutil.which("nvidia-smi"))
    log("desired state from %s: %s" % (args.state, describe_desired(state)))
    try:
        with engine["HostLock"](state.get("lock_file"), state.get("lock_timeout", 300)):
            with engine["NvmlSession"]() as session:
                targets = build_targets(engine, session, state)
                if not targets:
                    log("no GPU matches devices=%s device_filter=%s: nothing to do"
                        % (state.get("devices", "all"), state.get("device_filter")))
                    return 0
                result = engine["apply"](session, targets, options)
                report(result, args.check)
                pending = pending_text(result)
                if pending:
                    error(pending)
                    return EXIT_PENDING
                if args.check:
                    return 0
                # Verify: a fresh plan must be empty, or the layout is not what was asked for.
                verify_options = engine["Options"](check_mode=True, reset=options.reset,
                                                   allow_busy_kept_instances=True)
                verify = engine["apply"](session, build_targets(engine, session, state), verify_options)
                if verify["plan"]:
                    error("the layout is not in place after the apply; still to do: %s"
                          % "; ".join(step["description"] for step in verify["plan"]))
                    return EXIT_FAILED
                log("verified: %d GPU(s) match the desired layout (%s)"
                    % (len(result["gpus"]), "changed" if result["changed"] else "unchanged"))
    except engine["mig_config"].ConfigError as exc:
        error(exc.message)
        return EXIT_FAILED
    except engine["MigError"] as exc:
        error("%s (kind %s)" % (exc.message, exc.kind))
        for step in exc.result.get("plan", []):
            error("  planned: " + step["description"])
        return EXIT_FAILED
    except engine["NvmlError"] as exc:
        error("%s (kind %s)" % (exc.message, exc.kind))
        return EXIT_FAILED
    return 0


def describe_desired(state):
    if state.get("config") is not None:
        what = "config %s of %s" % (state.get("config_name") or "(the only one)", state.get("config_source"))
    else:
        what = "mode %s, layout %s" % (state.get("mode"), json.dumps(state.get("layout") or {}, sort_keys=True))
    return "%s; devices %s, device_filter %s, reset %s" % (what, state.get("devices", "all"),
                                                           state.get("device_filter") or "none",
                                                           state.get("reset", "if_needed"))


if __name__ == "__main__":
    sys.exit(main())
