#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""gpuops-mig-apply: apply the MIG layout that the gpuops.nvidia mig role wrote to /etc/gpuops/mig.json.

Run at boot by gpuops-mig-apply.service (GPU and compute instances never survive a reboot, and on Hopper
neither does the MIG mode). It imports the same engine as the nvidia_mig module, from the copy of the
collection's module_utils under /usr/local/lib/gpuops-nvidia, and runs what the module runs:
validate_desired() on the state file (the nvidia_mig options, as the role passed them to the module, plus the
parsed mig-parted config under `_mig_parted_config` when a config file is used, so no PyYAML is needed),
then the host-wide MIG lock, select_targets() and apply(). It logs on stdout (the journal) which GPUs each config
entry selected, the plan, the MIG devices kept (same UUID), destroyed and created, and the resulting slice maps,
then re-plans to verify that nothing is left to do. Warnings and failures go to stderr; a failure says per GPU
whether it changed, and the command that finishes an Ampere rollback the engine could not finish.

    gpuops-mig-apply [--state /etc/gpuops/mig.json] [--lib /usr/local/lib/gpuops-nvidia] [--check]

Exit status: 0 applied (or already in place), 1 the engine refused or failed (its message on stderr),
2 usage, engine or state file error (including a state the engine's validate_desired() refuses), 3 a MIG mode
change still waits for a GPU reset or reboot (layout not applied).
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
    """The desired state as the role wrote it (validate_desired() checks it)."""
    with open(path) as handle:
        state = json.load(handle)
    if not isinstance(state, dict):
        raise ValueError("%s is not a gpuops mig state file (a JSON object of nvidia_mig options)" % path)
    return state


class Engine:
    """The collection's module_utils, imported from the copy under `lib`."""

    def __init__(self, lib):
        sys.path.insert(0, lib)
        # pylint: disable=import-outside-toplevel
        from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
        from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlSession
        from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig
        self.failure = GpuopsError
        self.session = NvmlSession
        self.mig = _mig


def report(result, check):
    steps = result["plan"]
    if not steps:
        log("layout already in place: nothing to do")
    else:
        log("plan (%d step(s))%s:" % (len(steps), ", check mode: nothing changed" if check else ""))
        for step in steps:
            log("  " + step["description"])
        # which MIG devices are kept (same UUID, clients undisturbed), destroyed and created
        for line in result.get("diff", {}).get("prepared", "").splitlines():
            log(line)
    for gpu in result["gpus"]:
        log(gpu["slice_map"]["after"])
        if gpu.get("reset_problem"):
            error("GPU %d: %s" % (gpu["index"], gpu["reset_problem"]))


def warn(lines):
    for line in lines:
        error("warning: %s" % line)


def report_failure(exc):
    """What a failure left: the engine's message, then per GPU whether it changed, and the plan."""
    error("%s (kind %s)" % (exc.message, exc.kind))
    for gpu in exc.details.get("gpus", []):
        state = "changed" if gpu["changed"] else "as it was"
        if not gpu.get("confirmed", True) or gpu.get("after") is None:
            state += ", not confirmed (could not be read back)"
        error("  GPU %d: %s; %s" % (gpu["index"], state, gpu["slice_map"]["after"]))
    for rollback in exc.details.get("rollback", []):
        if rollback.get("command"):
            error("  GPU %d: finish the rollback with: %s" % (rollback["gpu"], rollback["command"]))
    for step in exc.details.get("plan", []):
        error("  planned: " + step["description"])


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
        engine = Engine(args.lib)
    except ImportError as exc:
        error("cannot import the MIG engine from %s: %s (run the gpuops.nvidia mig role again)" % (args.lib, exc))
        return EXIT_USAGE
    mig = engine.mig
    try:
        desired = mig.validate_desired(state)
    except engine.failure as exc:
        error("invalid desired MIG state in %s: %s (kind %s); run the gpuops.nvidia mig role again"
              % (args.state, exc.message, exc.kind))
        return EXIT_USAGE

    options = mig.Options.from_desired(desired, check_mode=args.check, run_command=run_command,
                                       nvidia_smi=shutil.which("nvidia-smi"))
    log("desired state from %s: %s" % (args.state, describe_desired(desired)))
    try:
        with mig.HostLock(desired["lock_file"], desired["lock_timeout"], required=not args.check) as lock:
            if lock.warning():
                warn([lock.warning()])
            with engine.session() as session:
                selection = mig.select_targets(session, desired)
                for entry in selection.entries or []:
                    log("config entry %d selects GPU(s): %s" % (entry["entry"], ", ".join(
                        str(index) for index in entry["selected"]) or "none"))
                warn(selection.warnings)
                if not selection.targets:
                    log("no GPU matches devices=%s device_filter=%s: nothing to do"
                        % (desired["devices"], desired["device_filter"]))
                    return 0
                result = mig.apply(session, selection.targets, options)
                report(result, args.check)
                warn(result.get("warnings", []))
                pending = pending_text(result)
                if pending:
                    error(pending)
                    return EXIT_PENDING
                if args.check:
                    return 0
                # Verify: a fresh plan must be empty, or the layout is not what was asked for.
                verify_options = mig.Options(check_mode=True, reset=options.reset, allow_busy_kept_instances=True)
                verify = mig.apply(session, mig.desired_targets(session, desired), verify_options)
                if verify["plan"]:
                    error("the layout is not in place after the apply; still to do: %s"
                          % "; ".join(step["description"] for step in verify["plan"]))
                    return EXIT_FAILED
                log("verified: %d GPU(s) match the desired layout (%s)"
                    % (len(result["gpus"]), "changed" if result["changed"] else "unchanged"))
    except engine.failure as exc:
        report_failure(exc)
        return EXIT_FAILED
    return 0


def describe_desired(desired):
    if desired["config_file"] is not None:
        what = "config %s of %s" % (desired["config_name"] or "(the only one)", desired["config_file"])
    else:
        layout = json.dumps(desired["layout"] or {}, sort_keys=True)
        what = "mode %s, layout %s" % (desired["mode"] or "enabled", layout)
    return "%s; devices %s, device_filter %s, reset %s" % (what, desired["devices"],
                                                           desired["device_filter"] or "none", desired["reset"])


if __name__ == "__main__":
    sys.exit(main())
