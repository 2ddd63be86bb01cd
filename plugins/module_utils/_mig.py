# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The MIG engine: desired state, read, plan, execute with rollback. Plain Python: no Ansible imports.

    desired = validate_desired(params)          # MIG_SPEC, the selector and the cross-option rules
    with HostLock(desired["lock_file"], desired["lock_timeout"]):
        with NvmlSession() as session:
            selection = select_targets(session, desired)   # .targets, and what each config entry selected
            result = apply(session, selection.targets, Options.from_desired(desired))

The nvidia_mig module and the mig role's boot helper (gpuops-mig-apply) both run exactly this: the module on
its parameters, the helper on the JSON the role wrote (the role's variables under the module's option names).

Everything is validated and planned for every GPU before the first NVML write. Each GPU is changed
atomically: if an NVML call fails, the GPUs whose plan was under way are restored to the snapshot taken
before (GIs and CIs recreated at their old placements, MIG mode set back, through another GPU reset where the
run reset an Ampere GPU) and the error says per GPU what was restored and what could not be. A GPU's
`changed` is what the GPU is, never false over a changed GPU: a GPU that cannot be read back after its last
write fails the run with changed true and its planned state (confirmed false).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import fcntl
import os
import time

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import (
    SELECTOR_SPEC,
    GpuopsError,
    argument_spec,
    check_options,
    check_selector,
    invalid,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils._nvml import NvmlError
from ansible_collections.gpuops.nvidia.plugins.module_utils._gpu_info import (
    gpu_instance_profiles,
    mig_instances,
)
from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_config as mig_config
from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_plan as planner

DEFAULT_LOCK_FILE = "/run/gpuops-nvidia/mig.lock"
LOCK_FILE_ENV = "GPUOPS_MIG_LOCK_FILE"
STATUS_SUCCESS = 0
STATUS_RESET_REQUIRED = 16
STATUS_IN_USE = 19
CLIENTS_TO_STOP = ("nvidia-dcgm / dcgm-exporter", "nvsm", "nvidia-persistenced", "other GPU exporters and "
                   "monitoring agents", "kubelet and the NVIDIA device plugin")
MODES = ("enabled", "disabled")
RESETS = ("if_needed", "never")

# The desired state of MIG: the nvidia_mig module's options, and the keys of the mig role's mig.json.
MIG_SPEC = argument_spec(SELECTOR_SPEC, {
    "mode": {"type": "str", "choices": list(MODES)},
    "layout": {"type": "dict"},
    "config_file": {"type": "path"},
    "config_name": {"type": "str"},
    "reset": {"type": "str", "choices": list(RESETS), "default": "if_needed"},
    "allow_busy_kept_instances": {"type": "bool", "default": False},
    "lock_file": {"type": "path"},
    "lock_timeout": {"type": "int", "default": 300},
})

# Not an option: the mig-parted document of `config_file`, already parsed, for front ends on nodes without
# PyYAML. The mig role embeds it in mig.json; validate_desired() then validates it instead of reading the file,
# and keeps it (as read from the file when it was not given) for desired_targets().
CONFIG_DOCUMENT = "_mig_parted_config"


class MigError(GpuopsError):
    """A failure of the MIG engine; `kind` is stable, `result` (the details) carries what is known (plans,
    rollback, what changed)."""

    def __init__(self, message, kind="mig", result=None, nvml_code=None):
        details = dict(result or {})
        details.pop("diff", None)  # the slice maps are in gpus[].slice_map; a failure returns no diff
        super(MigError, self).__init__(message, kind=kind, nvml_code=nvml_code, details=details)

    @property
    def result(self):
        return self.details


def check_mode_and_layout(mode, layout, where=None):
    """A layout needs MIG enabled; raises MigError (invalid_layout) for mode disabled with a layout."""
    if mode == "disabled" and layout:
        raise MigError("%sa layout was given with mode disabled; MIG devices need MIG enabled (use mode "
                       "enabled, or an empty layout)" % ("%s: " % where if where else ""), kind="invalid_layout")


def validate_desired(params):
    """The desired MIG state, checked without NVML; returns the normalized dict (every MIG_SPEC option).

    Applies MIG_SPEC (types, choices, defaults, unknown options), the device selector, and the rules between
    options: layout and config_file exclude each other, and so do mode and config_file; one of mode, layout
    and config_file is needed; config_name needs config_file; layout counts are positive whole numbers; a
    layout needs mode enabled. With config_file, the mig-parted document (CONFIG_DOCUMENT when the caller
    embedded it, else the file, read with PyYAML) is validated and config_name checked against it. Raises
    GpuopsError: invalid_argument, invalid_selection, invalid_layout, invalid_config or pyyaml_missing.
    """
    params = dict(params or {})
    document = params.get(CONFIG_DOCUMENT)
    desired = check_selector(check_options(MIG_SPEC, params))
    given = [name for name in ("mode", "layout", "config_file") if desired[name] is not None]
    problems = []
    if not given:
        problems.append("one of mode, layout or config_file is required")
    for other in ("layout", "mode"):
        if desired[other] is not None and desired["config_file"] is not None:
            problems.append("%s and config_file are mutually exclusive (the entries of a mig-parted config give "
                            "the %s)" % (other, "MIG devices" if other == "layout" else "MIG mode"))
    if desired["config_name"] is not None and desired["config_file"] is None:
        problems.append("config_name requires config_file")
    if document is not None and desired["config_file"] is None:
        problems.append("%s (a parsed mig-parted config) requires config_file" % CONFIG_DOCUMENT)
    if desired["lock_timeout"] < 0:
        problems.append("lock_timeout must not be negative, got %d" % desired["lock_timeout"])
    if problems:
        raise invalid("; ".join(problems))
    if desired["layout"] is not None:
        desired["layout"] = dict((str(key), planner.layout_count(key, count))
                                 for key, count in desired["layout"].items())
    check_mode_and_layout(desired["mode"], desired["layout"])
    if desired["config_file"] is not None:
        source = desired["config_file"]
        if document is None:
            document = mig_config.read(source)
        mig_config.select_config(mig_config.validate(document, source), desired["config_name"], source)
        desired[CONFIG_DOCUMENT] = document
    return desired


def desired_targets(session, desired):
    """The engine Targets for a validate_desired() dict: the selected GPUs with the layout, or with the
    entry of the mig-parted config that selects each (GPUs no entry selects are left out)."""
    return select_targets(session, desired).targets


class Selection:
    """What a desired state selects on this host: `targets`, and for a mig-parted config `entries` (per entry of
    the config, the GPUs it selected) and `warnings` (an entry that selects no GPU, or no GPU at all)."""

    def __init__(self, targets, entries=None, warnings=None):
        self.targets = targets
        self.entries = entries
        self.warnings = list(warnings or [])

    def report(self):
        """The result keys a front end adds: `config_entries` (config files only) and `warnings`."""
        result = {"warnings": list(self.warnings)}
        if self.entries is not None:
            result["config_entries"] = self.entries
        return result


def select_targets(session, desired):
    """desired_targets() with what the selection found (Selection): which GPUs each config entry selected, and a
    warning naming each entry that selects none (a filter for GPUs this host does not have, or a typo in an index),
    and one when nothing is selected at all."""
    gpus = session.select(desired["devices"], desired["device_filter"])
    if desired["config_file"] is None:
        warnings = [] if gpus else ["no GPU was selected (devices %s, device_filter %s select none); %s"
                                    % (desired["devices"], desired["device_filter"] or "none", session.inventory())]
        return Selection([Target(gpu, desired["mode"] or "enabled", desired["layout"]) for gpu in gpus],
                         warnings=warnings)
    source, name = desired["config_file"], desired["config_name"]
    document = desired.get(CONFIG_DOCUMENT)
    configs = mig_config.load(source) if document is None else mig_config.validate(document, source)
    entries = mig_config.select_config(configs, name, source)
    label = name if name is not None else list(configs)[0]
    chosen, selected = mig_config.match_entries(entries, gpus, label)
    report, warnings = [], []
    for position, entry in enumerate(entries):
        report.append({"entry": position, "device_filter": entry["device_filter"], "devices": entry["devices"],
                       "mig_enabled": entry["mig_enabled"], "selected": selected[position]})
        if not selected[position]:
            warnings.append("entry %d of config %s (%s) selects no GPU here; the GPUs it could select: %s. If that "
                            "is not intended, check its device-filter and devices"
                            % (position, label, mig_config.describe_entry(entry), _gpu_ids_text(gpus)))
    if not chosen:
        warnings.append("no GPU was selected: no entry of config %s selects any of %s" % (label, _gpu_ids_text(gpus)))
    targets = [Target(gpu, "enabled" if entry["mig_enabled"] else "disabled", entry["mig_devices"], source=label,
                      entry=position) for gpu, position, entry in chosen]
    return Selection(targets, report, warnings)


def _gpu_ids_text(gpus):
    if not gpus:
        return "none (devices / device_filter select no GPU)"
    return ", ".join("GPU %d (%s, %s)" % (gpu.index, gpu.name, gpu.pci_device_id) for gpu in gpus)


class Target:
    """What one GPU should look like: mode `enabled|disabled`, layout dict (None or {} = mode only); `source` and
    `entry` name the config and the entry of a mig-parted file it comes from."""

    def __init__(self, gpu, mode, layout=None, source=None, entry=None):
        self.gpu = gpu
        self.mode = mode
        self.layout = layout or {}
        self.source = source
        self.entry = entry

    def where(self):
        """`entry 1 of config mixed` for a target from a config file, else None."""
        if self.source is None:
            return None
        return "entry %s of config %s" % (self.entry, self.source) if self.entry is not None else "config %s" % self.source


class Options:
    def __init__(self, check_mode=False, reset="if_needed", allow_busy_kept_instances=False,
                 run_command=None, nvidia_smi=None):
        self.check_mode = check_mode
        self.reset = reset
        self.allow_busy_kept_instances = allow_busy_kept_instances
        self.run_command = run_command
        self.nvidia_smi = nvidia_smi

    @classmethod
    def from_desired(cls, desired, check_mode=False, run_command=None, nvidia_smi=None):
        """The run options of a validate_desired() dict; `run_command(argv) -> (rc, out, err)` and the path of
        nvidia-smi come from the front end (needed for Ampere GPU resets)."""
        return cls(check_mode=check_mode, reset=desired["reset"],
                   allow_busy_kept_instances=desired["allow_busy_kept_instances"], run_command=run_command,
                   nvidia_smi=nvidia_smi)


# -- host lock -----------------------------------------------------------------------------------------

class HostLock:
    """fcntl.flock on a host-wide file, so two runs never reconfigure MIG at once.

    With `required=False` (check mode, which writes nothing), a lock file the user may not create or open (a
    non-root user and root's lock) is not an error: the run goes on unlocked and `skipped` says why.
    """

    def __init__(self, path=None, timeout=300, poll=0.1, required=True):
        self.path = path or os.environ.get(LOCK_FILE_ENV) or DEFAULT_LOCK_FILE
        self.timeout = timeout
        self.poll = poll
        self.required = required
        self.skipped = None
        self.fd = None

    def _cannot(self, message, exc):
        denied = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        if denied and not self.required:
            self.skipped = "%s: %s" % (message, exc.strerror)
            return True
        if denied:
            raise MigError("%s: %s; the MIG lock and MIG changes need root: use become (or set lock_file to a file "
                           "this user may write)" % (message, exc.strerror), kind="no_permission")
        raise MigError("%s: %s" % (message, exc), kind="lock")

    def __enter__(self):
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            try:
                os.makedirs(directory, 0o755)
            except OSError as exc:
                if exc.errno != errno.EEXIST and self._cannot("cannot create the lock directory %s" % directory, exc):
                    return self
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if self._cannot("cannot open the MIG lock file %s" % self.path, exc):
                return self
        deadline = time.time() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (IOError, OSError) as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(self.fd)
                    self.fd = None
                    raise MigError("cannot lock %s: %s" % (self.path, exc), kind="lock")
                if time.time() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise MigError("another MIG reconfiguration holds the host lock %s; gave up after %s s (raise "
                                   "lock_timeout, or find the other run: fuser %s)"
                                   % (self.path, self.timeout, self.path), kind="lock_timeout")
                time.sleep(self.poll)
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, ("%d\n" % os.getpid()).encode())
        except OSError:
            pass
        return self

    def warning(self):
        """The warning for a check-mode run that went on without the lock, or None."""
        if self.skipped is None:
            return None
        return ("check mode read the GPUs without the host MIG lock (%s), so a reconfiguration running at the same "
                "time could make the plan stale; the real run takes the lock (and needs root)" % self.skipped)

    def __exit__(self, exc_type, exc_value, tb):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        return False


# -- reading ---------------------------------------------------------------------------------------------

def read_mode(session, gpu):
    """(current, pending) as 0/1, or None when the GPU has no MIG."""
    return session.mig_mode(gpu)


def resetless(session, gpu):
    """True when a MIG mode change applies at once (Hopper and later): the seam's one reader."""
    return session.resetless_mig(gpu)


def snapshot(session, gpu, catalog=None):
    mode = read_mode(session, gpu)
    if mode is None:
        return {"mode": None, "instances": []}
    instances = mig_instances(session, gpu, catalog and [catalog.profiles[n] for n in catalog.names]) \
        if mode[0] else []
    return {"mode": mode, "instances": instances}


def _mode_text(mode):
    return "enabled" if mode else "disabled"


def describe_layout(state, catalog):
    mode = state["mode"]
    if mode is None:
        return {"mig_capable": False, "mig_mode": None, "mig_mode_pending": None, "devices": {}, "instances": []}
    return {
        "mig_capable": True,
        "mig_mode": _mode_text(mode[0]),
        "mig_mode_pending": _mode_text(mode[1]),
        "devices": planner.instances_devices(state["instances"]),
        "instances": state["instances"],
    }


def render_map(gpu, state, catalog):
    """`GPU0 NVIDIA H100 80GB HBM3 [3g.40gb ...|...]`: one fixed-width line per GPU."""
    mode = state["mode"]
    if mode is None:
        body = "[no MIG]"
    elif not mode[0]:
        body = "[MIG disabled%s]" % (", enable pending reset" if mode[1] else "")
    else:
        body = planner.slice_map(state["instances"], catalog.memory_slices)
        if not mode[1]:
            body += " (MIG disable pending reset)"
    return "GPU%d %-24s %s" % (gpu.index, gpu.name, body)


# -- planning --------------------------------------------------------------------------------------------

def _step(gpu, action, description, **fields):
    step = {"gpu": gpu.index, "action": action, "description": "GPU %d: %s" % (gpu.index, description)}
    step.update(fields)
    return step


def _placement(start, size):
    return {"start": start, "size": size}


def _process_text(processes):
    return ", ".join("%s (%s)" % (p["pid"], p["name"] or "unknown") for p in processes)


class GpuWork:
    """Everything known and decided about one GPU before any write."""

    def __init__(self, gpu, target):
        self.gpu = gpu
        self.target = target
        self.catalog = None
        self.state = None
        self.resetless = True
        self.processes = []
        self.specs = []
        self.layout_plan = None
        self.mode_steps = []
        self.layout_steps = []
        self.needs_reset = False
        self.reset_required = False
        self.reboot_required = False
        self.layout_deferred = False
        self.reset_done = False
        self.reset_problem = None

    @property
    def steps(self):
        reset = [_step(self.gpu, "reset_gpu", "reset the GPU (nvidia-smi -r -i %s) to apply the pending MIG mode"
                       % self.gpu.bus_id, bus_id=self.gpu.bus_id)] if self.needs_reset else []
        return self.mode_steps + reset + self.layout_steps


def _layout_steps(work, plan):
    gpu, catalog = work.gpu, work.catalog
    steps = []
    for gi, ci in plan.destroy_cis:
        steps.append(_step(gpu, "destroy_compute_instance", "destroy compute instance %s (GI %d, CI %d, %s)"
                           % (ci["profile"], gi["id"], ci["id"], ci["uuid"]), gpu_instance_id=gi["id"],
                           compute_instance_id=ci["id"], profile=ci["profile"], placement=ci["placement"],
                           uuid=ci["uuid"]))
    for gi in plan.destroy_gis:
        for ci in gi["compute_instances"]:
            steps.append(_step(gpu, "destroy_compute_instance", "destroy compute instance %s (GI %d, CI %d, %s)"
                               % (ci["profile"], gi["id"], ci["id"], ci["uuid"]), gpu_instance_id=gi["id"],
                               compute_instance_id=ci["id"], profile=ci["profile"], placement=ci["placement"],
                               uuid=ci["uuid"]))
        steps.append(_step(gpu, "destroy_gpu_instance", "destroy GPU instance %s (GI %d at memory slices %s)"
                           % (gi["profile"], gi["id"], _slices(gi["placement"])), gpu_instance_id=gi["id"],
                           profile=gi["profile"], placement=gi["placement"]))
    for spec, start in plan.create_gis:
        name = spec[0]
        size = catalog.size(name)
        steps.append(_step(gpu, "create_gpu_instance", "create GPU instance %s at memory slices %s"
                           % (name, _slices(_placement(start, size))), profile=name,
                           profile_id=catalog.profiles[name]["id"], placement=_placement(start, size)))
        for ci_size, ci_start in zip(spec[1], plan.new_ci_starts[start]):
            steps.append(_ci_step(gpu, catalog, name, start, ci_size, ci_start))
    for gi_start, name, ci_size, ci_start in plan.create_cis:
        steps.append(_ci_step(gpu, catalog, name, gi_start, ci_size, ci_start))
    return steps


def _ci_step(gpu, catalog, gi_name, gi_start, size, start):
    profile = planner.ci_name(gi_name, catalog.slices(gi_name), size)
    return _step(gpu, "create_compute_instance", "create compute instance %s at compute slice(s) %s in the %s GI "
                 "at memory slice %d" % (profile, _slices(_placement(start, size)), gi_name, gi_start),
                 profile=profile, slices=size, gpu_instance_profile=gi_name, gpu_instance_start=gi_start,
                 placement=_placement(start, size))


def _slices(placement):
    start, size = placement["start"], placement["size"]
    return "%d" % start if size == 1 else "%d-%d" % (start, start + size - 1)


def _destroy_all_plan(state):
    plan = planner.GpuPlan()
    plan.destroy_gis = list(state["instances"])
    return plan


# Where a refusal names the GPU: plan_work() writes its messages around these marks, so that apply() can say a
# refusal that several GPUs share once, with the list of GPUs (`GPUs 0-7 (NVIDIA H100 80GB HBM3)`), the per-GPU
# detail (the processes of a busy GPU) after it, and `it` or `them`.
_WHERE = "\x00where\x00"
_DETAIL = "\x00detail\x00"
_IT = "\x00it\x00"


class _Refusal(MigError):
    """A GPU that cannot take its target (nothing written): the message, and its template around the marks."""

    def __init__(self, template, kind, target, detail=None):
        self.template = template
        self.target = target
        self.detail = detail
        super(_Refusal, self).__init__(_render(template, [self]), kind=kind)


def _render(template, refusals):
    """A refusal's message for one GPU or for several that share it."""
    details = [r.detail for r in refusals]
    if len(set(details)) == 1:
        detail = details[0] or ""
    else:
        detail = "; ".join("GPU %d: %s" % (r.target.gpu.index, r.detail) for r in refusals)
    return (template.replace(_WHERE, _where([r.target for r in refusals])).replace(_DETAIL, detail)
            .replace(_IT, "it" if len(refusals) == 1 else "them"))


def _ranges(numbers):
    """[0, 1, 2, 3, 5] -> `0-3, 5`."""
    parts, numbers = [], sorted(numbers)
    start = previous = numbers[0]
    for number in numbers[1:] + [None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else "%d-%d" % (start, previous))
        start = previous = number
    return ", ".join(parts)


def _where(targets):
    """One GPU: `GPU 0 (NVIDIA H100 80GB HBM3, 00000000:18:00.0)`; several: `GPUs 0-7 (NVIDIA H100 80GB HBM3)`;
    with the config entry the targets come from."""
    gpus = [t.gpu for t in targets]
    if len(gpus) == 1:
        text = gpus[0].describe()
    else:
        names = []
        for gpu in gpus:
            if gpu.name not in names:
                names.append(gpu.name)
        if len(names) == 1:
            text = "GPUs %s (%s)" % (_ranges([g.index for g in gpus]), names[0])
        else:
            text = "GPUs %s" % ", ".join("%d (%s)" % (g.index, g.name) for g in gpus)
    sources = []
    for target in targets:
        if target.where() is not None and target.where() not in sources:
            sources.append(target.where())
    return text + (" [%s]" % "; ".join(sources) if sources else "")


def plan_work(session, target, options):
    """Read one GPU and decide its steps; raises MigError for invalid targets (nothing written)."""
    gpu = target.gpu
    work = GpuWork(gpu, target)
    mode = read_mode(session, gpu)
    want = 1 if target.mode == "enabled" else 0
    try:
        check_mode_and_layout(target.mode, target.layout, _WHERE)
    except MigError as exc:
        raise _Refusal(exc.message, exc.kind, target)
    if mode is None:
        work.state = {"mode": None, "instances": []}
        work.catalog = planner.Catalog([])
        if want:
            raise _Refusal("%s does not support MIG; select only MIG-capable GPUs (devices / device_filter)" % _WHERE,
                           "not_supported", target)
        return work
    work.catalog = planner.Catalog(gpu_instance_profiles(session, gpu))
    work.state = snapshot(session, gpu, work.catalog)
    work.resetless = resetless(session, gpu)
    if target.layout:
        try:
            work.specs = planner.expand_layout(work.catalog, target.layout, _WHERE)
        except planner.LayoutError as exc:
            raise _Refusal(exc.message, exc.kind, target)
        reason = planner.explain_infeasible(work.catalog, work.specs, "the GPU")
        if reason:
            raise _Refusal("layout %s cannot fit on %s: %s" % (_layout_text(target.layout), _WHERE, reason),
                           "does_not_fit", target)
    work.processes = session.compute_processes(gpu.handle, gpu)

    current, pending = mode
    mode_change = False
    if current != want:
        if want == 0 and work.state["instances"]:
            work.mode_steps.extend(_layout_steps(work, _destroy_all_plan(work.state)))
        if pending != want:
            work.mode_steps.append(_step(gpu, "set_mig_mode", "%s MIG mode" % ("enable" if want else "disable"),
                                         mode=target.mode))
        mode_change = True
        if not work.resetless:
            if options.reset == "if_needed":
                work.needs_reset = True
            else:
                work.reset_required = True
    elif pending != want:
        work.mode_steps.append(_step(gpu, "set_mig_mode", "cancel the pending MIG mode change (keep %s)"
                                     % target.mode, mode=target.mode))

    if want and target.layout:
        current_instances = work.state["instances"] if current == 1 else []
        try:
            work.layout_plan = planner.plan_gpu(work.catalog, current_instances, work.specs, _WHERE)
        except planner.LayoutError as exc:
            raise _Refusal(exc.message, exc.kind, target)
        work.layout_steps = _layout_steps(work, work.layout_plan)
        if work.reset_required:
            work.layout_deferred = bool(work.layout_steps)
            work.layout_steps = []

    _check_busy(work, mode_change, options)
    return work


def _check_busy(work, mode_change, options):
    processes = work.processes
    if not processes:
        return
    target = work.target
    if mode_change or work.needs_reset:
        raise _Refusal("cannot change the MIG mode of %s: compute processes use %s: %s; stop them first"
                       % (_WHERE, _IT, _DETAIL), "busy", target, _process_text(processes))
    doomed = set()
    for step in work.steps:
        if step["action"] == "destroy_compute_instance":
            doomed.add((step["gpu_instance_id"], step["compute_instance_id"]))
        elif step["action"] == "destroy_gpu_instance":
            doomed.add((step["gpu_instance_id"], None))
    hit = [p for p in processes if p["gpu_instance_id"] is None
           or (p["gpu_instance_id"], p["compute_instance_id"]) in doomed or (p["gpu_instance_id"], None) in doomed]
    if not doomed:
        return
    if hit:
        raise _Refusal("cannot reconfigure %s: compute processes run on MIG devices that must be destroyed: %s; "
                       "stop them first" % (_WHERE, _DETAIL), "busy", target, _process_text(hit))
    if not options.allow_busy_kept_instances:
        raise _Refusal("cannot reconfigure %s while compute processes run on %s: %s (they use only instances "
                       "that are kept; set allow_busy_kept_instances to proceed anyway)"
                       % (_WHERE, _IT, _DETAIL), "busy", target, _process_text(processes))


def _layout_text(layout):
    return "{%s}" % ", ".join("%s: %s" % (k, layout[k]) for k in sorted(layout))


# -- execution -------------------------------------------------------------------------------------------

class MigWriter:
    """The MIG writes on one GPU, each written once: the executor and the rollback both go through these.

    Every method raises NvmlError naming what it attempted on the GPU.
    """

    def __init__(self, session, gpu):
        self.session = session
        self.gpu = gpu

    def call(self, name, *args, **kwargs):
        kwargs.setdefault("gpu", self.gpu)
        return self.session.call(name, *args, **kwargs)

    def gpu_instance(self, gi_id):
        """The handle of GPU instance `gi_id`."""
        return self.call("nvmlDeviceGetGpuInstanceById", self.gpu.handle, gi_id, what="open GPU instance %d" % gi_id)

    def compute_profile_id(self, gi, slices, profile):
        """The id of the shared compute-instance profile of `slices` compute slices in GPU instance `gi`."""
        nvml = self.session.pynvml
        info = self.call("nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, planner.CI_PROFILE_INDEX[slices],
                         nvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                         what="read compute-instance profile %s" % profile)
        return info.id

    def compute_placements(self, gi, profile_id):
        """The starts NVML offers for a compute instance of `profile_id` in GPU instance `gi`."""
        nvml = self.session.pynvml
        count = ctypes.c_uint(0)
        self.call("nvmlGpuInstanceGetComputeInstancePossiblePlacements", gi, profile_id, None, ctypes.byref(count),
                  what="count compute-instance placements")
        entries = (nvml.c_nvmlComputeInstancePlacement_t * max(count.value, 1))()
        self.call("nvmlGpuInstanceGetComputeInstancePossiblePlacements", gi, profile_id, entries,
                  ctypes.byref(count), what="list compute-instance placements")
        return [entries[i].start for i in range(count.value)]

    def create_gpu_instance(self, profile, profile_id, placement):
        """Create a GPU instance of `profile` at `placement` ({start, size}); returns its handle."""
        struct = self.session.pynvml.c_nvmlGpuInstancePlacement_t()
        struct.start, struct.size = placement["start"], placement["size"]
        return self.call("nvmlDeviceCreateGpuInstanceWithPlacement", self.gpu.handle, profile_id,
                         ctypes.byref(struct), what="create GPU instance %s at memory slices %s"
                         % (profile, _slices(placement)))

    def destroy_gpu_instance(self, gi, gi_id, profile):
        """Destroy GPU instance `gi` (id `gi_id`); its compute instances must be gone."""
        self.call("nvmlGpuInstanceDestroy", gi, what="destroy GPU instance %s (GI %d)" % (profile, gi_id))

    def create_compute_instance(self, gi, profile, profile_id, placement):
        """Create a compute instance of `profile` at `placement` ({start, size}) in GPU instance `gi`."""
        struct = self.session.pynvml.c_nvmlComputeInstancePlacement_t()
        struct.start, struct.size = placement["start"], placement["size"]
        self.call("nvmlGpuInstanceCreateComputeInstanceWithPlacement", gi, profile_id, ctypes.byref(struct),
                  what="create compute instance %s at compute slice(s) %s" % (profile, _slices(placement)))

    def destroy_compute_instance(self, gi, gi_id, ci_id, profile):
        """Destroy compute instance `ci_id` of GPU instance `gi` (id `gi_id`)."""
        ci = self.call("nvmlGpuInstanceGetComputeInstanceById", gi, ci_id,
                       what="open compute instance %d/%d" % (gi_id, ci_id))
        self.call("nvmlComputeInstanceDestroy", ci, what="destroy compute instance %s (GI %d, CI %d)"
                  % (profile, gi_id, ci_id))

    def set_mode(self, mode):
        """Set the MIG mode (1/0); returns the activation status (success, or reset required on Ampere)."""
        gpu = self.gpu
        try:
            status = self.call("nvmlDeviceSetMigMode", gpu.handle, mode,
                               what="%s MIG mode" % ("enable" if mode else "disable"))
        except NvmlError as exc:
            if exc.kind != "in_use":
                raise
            status = STATUS_IN_USE
        if status in (STATUS_SUCCESS, STATUS_RESET_REQUIRED):
            return status
        if status == STATUS_IN_USE:
            raise NvmlError("cannot %s MIG mode on %s: the GPU is in use by another client (activation status "
                            "IN_USE); stop the clients that hold it (%s) and run again"
                            % ("enable" if mode else "disable", gpu.describe(), ", ".join(CLIENTS_TO_STOP)),
                            kind="in_use", nvml_code=status)
        raise NvmlError("setting MIG mode on %s returned activation status %d" % (gpu.describe(), status),
                        kind="nvml", nvml_code=status)


class _Executor:
    """Runs one GPU's planned steps through its MigWriter, keeping the handles and the CI slices in use."""

    def __init__(self, session, work):
        self.work = work
        self.gpu = work.gpu
        self.writer = MigWriter(session, work.gpu)
        self.gi_handles = {}
        self.ci_taken = {}
        self.done = []

    def gi_handle(self, start):
        if start not in self.gi_handles:
            for gi in self.work.state["instances"]:
                if gi["placement"]["start"] == start:
                    self.gi_handles[start] = self.writer.gpu_instance(gi["id"])
                    self.ci_taken[start] = [(ci["placement"]["start"], ci["placement"]["size"])
                                            for ci in gi["compute_instances"]]
                    break
            else:
                raise NvmlError("no GPU instance at memory slice %d on %s" % (start, self.gpu.describe()),
                                kind="not_found")
        return self.gi_handles[start]

    def run(self, step):
        action = step["action"]
        writer = self.writer
        if action == "destroy_compute_instance":
            start = self._gi_start(step["gpu_instance_id"])
            writer.destroy_compute_instance(self.gi_handle(start), step["gpu_instance_id"],
                                            step["compute_instance_id"], step["profile"])
            taken = self.ci_taken.get(start, [])
            placement = (step["placement"]["start"], step["placement"]["size"])
            if placement in taken:
                taken.remove(placement)
        elif action == "destroy_gpu_instance":
            start = step["placement"]["start"]
            writer.destroy_gpu_instance(self.gi_handle(start), step["gpu_instance_id"], step["profile"])
            del self.gi_handles[start]
        elif action == "set_mig_mode":
            writer.set_mode(1 if step["mode"] == "enabled" else 0)
        elif action == "create_gpu_instance":
            start = step["placement"]["start"]
            self.gi_handles[start] = writer.create_gpu_instance(step["profile"], step["profile_id"],
                                                                step["placement"])
            self.ci_taken[start] = []
        elif action == "create_compute_instance":
            start = step["gpu_instance_start"]
            gi = self.gi_handle(start)
            profile_id = writer.compute_profile_id(gi, step["slices"], step["profile"])
            possible = writer.compute_placements(gi, profile_id)
            taken = self.ci_taken.setdefault(start, [])
            planned = step["placement"]["start"]
            candidates = [planned] if planned in possible else []
            candidates += [s for s in possible if s != planned]
            chosen = None
            for candidate in candidates:
                if not planner._overlaps(candidate, step["slices"], taken):
                    chosen = candidate
                    break
            if chosen is None:
                raise NvmlError("no free placement for compute instance %s in the GI at memory slice %d of %s"
                                % (step["profile"], start, self.gpu.describe()), kind="insufficient_resources")
            writer.create_compute_instance(gi, step["profile"], profile_id, _placement(chosen, step["slices"]))
            taken.append((chosen, step["slices"]))
        self.done.append(step)

    def _gi_start(self, gi_id):
        for gi in self.work.state["instances"]:
            if gi["id"] == gi_id:
                return gi["placement"]["start"]
        raise NvmlError("GPU instance %d is not on %s" % (gi_id, self.gpu.describe()), kind="not_found")


def _instance_key(gi):
    return (gi["profile_id"], gi["placement"]["start"], gi["placement"]["size"])


def _ci_key(ci):
    return (ci["profile"], ci["placement"]["start"], ci["placement"]["size"])


def layout_signature(state):
    """What must match for a GPU to be 'as it was': mode, GIs and CIs with profiles and placements."""
    return (state["mode"], sorted((_instance_key(gi), sorted(_ci_key(ci) for ci in gi["compute_instances"]))
                                  for gi in state["instances"]))


# -- rollback --------------------------------------------------------------------------------------------

def _reset_command(gpus):
    return "nvidia-smi -r -i %s" % ",".join(gpu.bus_id for gpu in gpus)


def _reopen(session, gpu):
    """A GPU's handle again after a GPU reset."""
    gpu.handle = session.call("nvmlDeviceGetHandleByUUID", gpu.uuid, what="reopen the GPU after the reset", gpu=gpu)


class _Rollback:
    """Brings one GPU back to its snapshot (work.state), in three phases so that the GPUs whose rollback needs a
    GPU reset (an Ampere mode change that a reset already applied) share one `nvidia-smi -r`:

    1. undo(): destroy the instances that are not in the snapshot, set the MIG mode back;
    2. after_reset(problem): once the reset ran (or could not), re-read the mode and set a pending mode back;
    3. recreate(): recreate the missing GIs, then their CIs, at their old placements; finish() reads it back.

    Every NVML call is guarded: a failing write or read is recorded in `problems` and the rollback goes on.
    """

    def __init__(self, session, work):
        self.session = session
        self.work = work
        self.gpu = work.gpu
        self.before = work.state
        self.writer = MigWriter(session, work.gpu)
        self.problems = []
        self.steps = []
        self.recreated = 0
        self.mode = None
        self.command = None

    def _attempt(self, description, function, *args):
        try:
            result = function(*args)
        except NvmlError as exc:
            self.problems.append("%s: %s" % (description, exc.message))
            return False, None
        self.steps.append(description)
        return True, result

    def _read(self, function, *args):
        try:
            return True, function(*args)
        except NvmlError as exc:
            self.problems.append(exc.message)
            return False, None

    def _read_mode(self):
        ok, mode = self._read(read_mode, self.session, self.gpu)
        if ok:
            self.mode = mode
        return ok

    @property
    def needs_reset(self):
        return self.mode is not None and self.mode[0] != self.before["mode"][0]

    def undo(self):
        before = self.before
        if self.work.reset_done and not self._read(_reopen, self.session, self.gpu)[0]:
            return
        ok, now = self._read(snapshot, self.session, self.gpu, self.work.catalog)
        if not ok:
            return
        wanted = dict((_instance_key(gi), gi) for gi in before["instances"]) if before["mode"][0] else {}
        for gi in now["instances"]:
            keep = wanted.get(_instance_key(gi))
            keep_cis = set(_ci_key(ci) for ci in keep["compute_instances"]) if keep else set()
            doomed = [ci for ci in gi["compute_instances"] if _ci_key(ci) not in keep_cis]
            if keep is not None and not doomed:
                continue
            ok, handle = self._read(self.writer.gpu_instance, gi["id"])
            if not ok:
                continue
            for ci in doomed:
                self._attempt("destroy compute instance %s (GI %d, CI %d)" % (ci["profile"], gi["id"], ci["id"]),
                              self.writer.destroy_compute_instance, handle, gi["id"], ci["id"], ci["profile"])
            if keep is None:
                self._attempt("destroy GPU instance %s (GI %d)" % (gi["profile"], gi["id"]),
                              self.writer.destroy_gpu_instance, handle, gi["id"], gi["profile"])
        if not self._read_mode() or self.mode == before["mode"]:
            return
        target = before["mode"][0] if self.mode[0] != before["mode"][0] else before["mode"][1]
        self._attempt("set MIG mode back to %s" % _mode_text(target), self.writer.set_mode, target)
        self._read_mode()

    def after_reset(self, problem):
        before = self.before
        if problem is None:
            self.steps.append("reset the GPU (%s) to apply the MIG mode it had" % _reset_command([self.gpu]))
            if not self._read(_reopen, self.session, self.gpu)[0] or not self._read_mode():
                return
            if self.mode[0] == before["mode"][0] and self.mode[1] != before["mode"][1]:
                self._attempt("set the pending MIG mode back to %s" % _mode_text(before["mode"][1]),
                              self.writer.set_mode, before["mode"][1])
                self._read_mode()
            if not self.needs_reset:
                return
            problem = "the mode did not change with the reset"
        self.command = _reset_command([self.gpu])
        self.problems.append("MIG mode is %s (pending %s), was %s: the rollback needs a GPU reset, but %s; finish "
                             "the rollback with `%s` (or reboot the node)"
                             % (_mode_text(self.mode[0]), _mode_text(self.mode[1]), _mode_text(before["mode"][0]),
                                problem, self.command))

    def recreate(self):
        before = self.before
        if not before["mode"][0] or not self._read_mode() or not self.mode[0]:
            return
        ok, now = self._read(snapshot, self.session, self.gpu, self.work.catalog)
        if not ok:
            return
        existing = dict((_instance_key(gi), gi) for gi in now["instances"])
        for gi in before["instances"]:
            have = existing.get(_instance_key(gi))
            have_cis = set(_ci_key(ci) for ci in have["compute_instances"]) if have else set()
            missing = [ci for ci in gi["compute_instances"] if _ci_key(ci) not in have_cis]
            if have is None:
                ok, handle = self._attempt("recreate GPU instance %s at memory slices %s"
                                           % (gi["profile"], _slices(gi["placement"])),
                                           self.writer.create_gpu_instance, gi["profile"], gi["profile_id"],
                                           gi["placement"])
            elif missing:
                ok, handle = self._read(self.writer.gpu_instance, have["id"])
            if not missing or not ok:
                continue
            for ci in missing:
                if self._attempt("recreate compute instance %s at compute slice(s) %s"
                                 % (ci["profile"], _slices(ci["placement"])), _recreate_ci, self.writer, handle,
                                 ci)[0]:
                    self.recreated += 1

    def finish(self):
        """{gpu, restored (True, False, or None when the GPU could not be read back), problems, steps, instances,
        recreated_devices, command (what finishes an unfinished Ampere rollback)}; `state` is the GPU read back."""
        ok, after = self._read(snapshot, self.session, self.gpu, self.work.catalog)
        restored = None
        if ok:
            restored = layout_signature(after) == layout_signature(self.before)
            if not restored and not self.problems:
                self.problems.append("the GPU's instances differ from before")
        self.state = after
        return {"gpu": self.gpu.index, "restored": restored, "problems": self.problems, "steps": self.steps,
                "instances": after["instances"] if ok else None, "recreated_devices": self.recreated,
                "command": self.command}


def _recreate_ci(writer, gi, ci):
    writer.create_compute_instance(gi, ci["profile"], writer.compute_profile_id(gi, ci["slices"], ci["profile"]),
                                   ci["placement"])


def restore_all(session, works, options=None):
    """Roll every GPU of `works` back to its snapshot; returns [(rollback record, state read back or None)].

    A GPU whose MIG mode a forward reset already changed (Ampere) needs another reset to go back: when the run's
    reset policy allowed the forward reset, the rollback resets those GPUs too, all with one `nvidia-smi -r`;
    otherwise its record names the command that finishes the rollback.
    """
    rollbacks = [_Rollback(session, work) for work in works]
    for rollback in rollbacks:
        rollback.undo()
    pending = [r for r in rollbacks if r.needs_reset]
    if pending:
        if options is None or options.reset != "if_needed":
            problem = "the reset policy (reset: never) does not allow one"
        else:
            problem = _run_reset(options, sorted((r.gpu for r in pending), key=lambda gpu: gpu.index))
        for rollback in pending:
            rollback.after_reset(problem)
    for rollback in rollbacks:
        rollback.recreate()
    return [(rollback.finish(), rollback.state) for rollback in rollbacks]


def restore(session, work, options=None):
    """Bring one GPU back to work.state (the snapshot); returns the rollback record (see restore_all)."""
    return restore_all(session, [work], options)[0][0]


# -- the whole run ---------------------------------------------------------------------------------------

NOT_ROOT = ("check mode ran as a non-root user (uid %d): reading the GPUs needs no root, but the real run does, to take "
            "the host lock and to change MIG (use become)")


def _run_reset(options, gpus):
    """`nvidia-smi -r -i BUS,...`; returns None, or what went wrong."""
    bus_ids = [gpu.bus_id for gpu in gpus]
    if not options.nvidia_smi or options.run_command is None:
        return "nvidia-smi was not found, so the GPU(s) %s cannot be reset" % ", ".join(bus_ids)
    argv = [options.nvidia_smi, "-r", "-i", ",".join(bus_ids)]
    rc, out, err = options.run_command(argv)
    if rc != 0:
        return "`%s` failed (rc=%s): %s" % (" ".join(argv), rc, (err or out or "").strip())
    return None


def _reset(session, works, options):
    """nvidia-smi -r -i BUS_IDS for GPUs whose mode change is pending; returns an error text or None."""
    problem = _run_reset(options, [w.gpu for w in works])
    if problem is None:
        for work in works:
            work.reset_done = True
        for work in works:
            _reopen(session, work.gpu)
    return problem


def _read_back(session, work):
    """(state, None), or (None, NvmlError) when the GPU cannot be read after its steps."""
    try:
        return snapshot(session, work.gpu, work.catalog), None
    except NvmlError as exc:
        return None, exc


def _device(gi, ci, gi_size=None, gi_profile=None):
    """One MIG device (a CI) or an empty GI, for gpus[].mig_devices."""
    gi_placement = gi["placement"] if gi_size is None else _placement(gi["placement"]["start"], gi_size)
    return {"profile": ci["profile"] if ci else gi.get("profile", gi_profile),
            "gpu_instance_profile": gi.get("profile", gi_profile), "gpu_instance_id": gi.get("id"),
            "gpu_instance_placement": gi_placement, "compute_instance_id": ci.get("id") if ci else None,
            "placement": ci["placement"] if ci else None, "uuid": ci.get("uuid") if ci else None}


def _device_changes(work, after_state):
    """{kept, destroyed, created}: the MIG devices (CIs, and GIs without CIs) the plan keeps (same MIG UUID: their
    clients are not disturbed), destroys and creates. Created devices have their UUIDs when `after_state` (the GPU
    read back after a real run) is given, else None."""
    state = work.state
    before = state["instances"] if state["mode"] and state["mode"][0] else []
    doomed_cis, doomed_gis = set(), set()
    for step in work.steps:
        if step["action"] == "destroy_compute_instance":
            doomed_cis.add((step["gpu_instance_id"], step["compute_instance_id"]))
        elif step["action"] == "destroy_gpu_instance":
            doomed_gis.add(step["gpu_instance_id"])
    kept, destroyed, created = [], [], []
    for gi in before:
        for ci in gi["compute_instances"]:
            (destroyed if (gi["id"], ci["id"]) in doomed_cis else kept).append(_device(gi, ci))
        if not gi["compute_instances"]:
            (destroyed if gi["id"] in doomed_gis else kept).append(_device(gi, None))
    if after_state is not None:
        known = set(ci["uuid"] for gi in before for ci in gi["compute_instances"])
        kept_gis = set(gi["id"] for gi in before if gi["id"] not in doomed_gis)
        for gi in after_state["instances"]:
            for ci in gi["compute_instances"]:
                if ci["uuid"] not in known:
                    created.append(_device(gi, ci))
            if not gi["compute_instances"] and gi["id"] not in kept_gis:
                created.append(_device(gi, None))
        return {"kept": kept, "destroyed": destroyed, "created": created}
    kept_ids = dict((gi["placement"]["start"], gi["id"]) for gi in before if gi["id"] not in doomed_gis)
    for step in work.steps:
        if step["action"] == "create_compute_instance":
            gi = {"profile": step["gpu_instance_profile"], "id": kept_ids.get(step["gpu_instance_start"]),
                  "placement": _placement(step["gpu_instance_start"], 0)}
            ci = {"profile": step["profile"], "id": None, "placement": step["placement"], "uuid": None}
            created.append(_device(gi, ci, gi_size=work.catalog.size(step["gpu_instance_profile"])))
    return {"kept": kept, "destroyed": destroyed, "created": created}


def _gpu_result(work, after_state, executed, changed=None, confirmed=True, devices=True):
    """One entry of `gpus`. `after_state` None: the GPU could not be read back (after null). `changed` defaults
    to whether steps ran; `confirmed` False: `after` is the planned state, not read back."""
    gpu, catalog = work.gpu, work.catalog
    result = {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "bus_id": gpu.bus_id,
        "name": gpu.name,
        "pci_device_id": gpu.pci_device_id,
        "config_entry": work.target.source,
        "config_entry_index": work.target.entry,
        "changed": bool(executed) if changed is None else changed,
        "confirmed": confirmed,
        "before": describe_layout(work.state, catalog),
        "after": describe_layout(after_state, catalog) if after_state is not None else None,
        "plan": work.steps,
        "executed": executed,
        "reset_required": work.reset_required,
        "reboot_required": work.reboot_required,
        "layout_applied": not work.layout_deferred,
        "mig_devices": _device_changes(work, after_state if confirmed else None) if devices else None,
        "slice_map": {"before": render_map(gpu, work.state, catalog),
                      "after": render_map(gpu, after_state, catalog) if after_state is not None
                      else "GPU%d %-24s [not read back]" % (gpu.index, gpu.name)},
    }
    if work.reset_problem:
        result["reset_problem"] = work.reset_problem
    return result


def _predicted_state(work):
    state = work.state
    if state["mode"] is None:
        return state
    want = 1 if work.target.mode == "enabled" else 0
    current, pending = state["mode"]
    if want != current and not work.resetless and (work.reset_required or not work.needs_reset):
        return {"mode": (current, want), "instances": [] if not want else state["instances"]}
    if not want:
        return {"mode": (0, 0), "instances": []}
    if work.layout_plan is not None and not work.layout_deferred:
        return {"mode": (1, 1), "instances": planner.predicted_instances(work.catalog, work.layout_plan)}
    return {"mode": (1, 1), "instances": state["instances"] if current else []}


def _plan_all(session, targets, options):
    """GpuWork for every target, or one MigError for all the refusals (a refusal shared by several GPUs is said
    once, with the list of GPUs); nothing is written."""
    works, refusals = [], []
    for target in targets:
        try:
            works.append(plan_work(session, target, options))
        except MigError as exc:
            refusals.append(exc)
        except NvmlError as exc:
            raise NvmlError("%s (nothing was changed)" % exc.message, kind=exc.kind, nvml_code=exc.nvml_code)
    if not refusals:
        return works
    groups = []
    for exc in refusals:
        template = getattr(exc, "template", None)
        for group in groups:
            if template is not None and (group["kind"], group["template"]) == (exc.kind, template):
                group["refusals"].append(exc)
                break
        else:
            groups.append({"kind": exc.kind, "template": template, "message": exc.message, "refusals": [exc]})
    messages = [_render(g["template"], g["refusals"]) if g["template"] is not None else g["message"] for g in groups]
    kinds = sorted(set(e.kind for e in refusals))
    refused = [{"gpu": e.target.gpu.index, "error_kind": e.kind} for e in refusals if getattr(e, "target", None)]
    raise MigError("; ".join(messages) + " (nothing was changed)", kind=kinds[0] if len(kinds) == 1 else "invalid",
                   result={"refused": refused})


def apply(session, targets, options):
    """Validate and plan every target, then (unless check mode) execute; returns the result dict.

    Nothing is written unless every target is valid. A failure part-way rolls back the GPUs whose plan was under
    way; the MigError's result then says per GPU whether it changed. A GPU that cannot be read back after its
    steps ran fails the run with changed true and its planned state (confirmed false).
    """
    works = _plan_all(session, targets, options)
    if options.check_mode:
        results = []
        for work in works:
            if work.needs_reset and not options.nvidia_smi:
                work.reboot_required = True
            results.append(_gpu_result(work, _predicted_state(work), work.steps))
        summary = _summary(results)
        if os.geteuid() != 0:
            summary["warnings"] = [NOT_ROOT % os.geteuid()]
        return summary
    return _execute(session, works, options)


def _execute(session, works, options):
    executors = dict((w.gpu.index, _Executor(session, w)) for w in works)
    complete = set()
    running = None
    try:
        for work in works:
            running = work
            for step in work.mode_steps:
                executors[work.gpu.index].run(step)
            if not work.layout_steps and not work.needs_reset:
                complete.add(work.gpu.index)
        pending = [w for w in works if w.needs_reset]
        running = None
        if pending:
            problem = _reset(session, pending, options)
            for work in pending:
                mode = read_mode(session, work.gpu)
                if mode[0] != (1 if work.target.mode == "enabled" else 0):
                    work.reboot_required = work.reset_required = True
                    work.reset_problem = problem or "the MIG mode is still pending after the reset"
                    work.layout_deferred = bool(work.layout_steps)
                    work.layout_steps = []
                    complete.add(work.gpu.index)
                else:
                    executors[work.gpu.index].done.append(work.steps[len(work.mode_steps)])
        for work in works:
            if work.gpu.index in complete:
                continue
            running = work
            for step in work.layout_steps:
                executors[work.gpu.index].run(step)
            complete.add(work.gpu.index)
    except NvmlError as exc:
        raise _failure(session, works, executors, complete, running, exc, options)

    results, unconfirmed = [], []
    for work in works:
        executed = executors[work.gpu.index].done
        after, error = _read_back(session, work) if executed else (work.state, None)
        if error is not None:
            unconfirmed.append((work, error))
            results.append(_gpu_result(work, _predicted_state(work), executed, confirmed=False))
        else:
            results.append(_gpu_result(work, after, executed))
    summary = _summary(results)
    if unconfirmed:
        lines = ["%s was changed (all %d planned step(s) ran) but could not be read back to confirm it: %s"
                 % (work.gpu.describe(), len(executors[work.gpu.index].done), error.message)
                 for work, error in unconfirmed]
        confirmed = [r["index"] for r in results if r["changed"] and r["confirmed"]]
        if confirmed:
            lines.append("GPU(s) %s were reconfigured and keep the new layout (read back)"
                         % ", ".join(str(index) for index in confirmed))
        lines.append("the result's `after` is the planned state where it says confirmed: false; run again to verify")
        first = unconfirmed[0][1]
        raise MigError(". ".join(lines), kind=first.kind, result=summary, nvml_code=first.nvml_code)
    return summary


def _failure(session, works, executors, complete, running, exc, options):
    """The MigError for an NVML failure part-way: roll back the GPUs whose plan was under way, then say per GPU
    what it is now (as it was, rolled back, not fully restored, or reconfigured completely)."""
    started = [w for w in reversed(works)
               if (executors[w.gpu.index].done or w.reset_done) and w.gpu.index not in complete]
    rolled = dict((record["gpu"], (record, state)) for record, state in restore_all(session, started, options))
    results, lines, untouched, completed = [], [exc.message], [], []
    if running is not None and not executors[running.gpu.index].done:
        lines.append("GPU %d is as it was (the failing step was its first change)" % running.gpu.index)
    for work in works:
        index = work.gpu.index
        done = executors[index].done
        if index in rolled:
            record, state = rolled[index]
            result = _gpu_result(work, state, done, changed=record["restored"] is not True, devices=False)
            result["rolled_back"] = True
            results.append(result)
        elif done:
            after, error = _read_back(session, work)
            if error is None:
                results.append(_gpu_result(work, after, done))
            else:
                results.append(_gpu_result(work, _predicted_state(work), done, confirmed=False))
            completed.append((index, error))
        else:
            results.append(_gpu_result(work, work.state, [], changed=False, devices=False))
            if running is None or index != running.gpu.index:
                untouched.append(index)
    rollbacks = []
    for work in reversed(works):
        if work.gpu.index not in rolled:
            continue
        record = rolled[work.gpu.index][0]
        rollbacks.append(record)
        recreated = record["recreated_devices"]
        renewed = "; its %d recreated MIG device(s) have new UUIDs" % recreated if recreated else ""
        if record["restored"] is True:
            lines.append("GPU %d was rolled back and is as it was (%d step(s) undone%s)"
                         % (record["gpu"], len(record["steps"]), renewed))
        elif record["restored"] is None:
            lines.append("GPU %d was rolled back (%d step(s) undone%s) but could not be read back to confirm that it "
                         "is as it was: %s" % (record["gpu"], len(record["steps"]), renewed,
                                               "; ".join(record["problems"])))
        else:
            lines.append("GPU %d could NOT be fully restored%s: %s" % (record["gpu"], renewed,
                                                                       "; ".join(record["problems"])))
    if completed:
        lines.append("GPU(s) %s were reconfigured completely before the failure and keep the new layout"
                     % ", ".join(str(index) for index, _unused in completed))
        lines.extend("GPU %d could not be read back to confirm it: %s" % (index, error.message)
                     for index, error in completed if error is not None)
    if untouched:
        lines.append("GPU(s) %s were not changed" % ", ".join(str(index) for index in untouched))
    summary = _summary(results)
    summary["rollback"] = rollbacks
    summary["failed_gpu"] = running.gpu.index if running is not None else None
    return MigError(". ".join(lines), kind=exc.kind, result=summary, nvml_code=exc.nvml_code)


def _diff_lines(result):
    """What the diff says about one GPU: the MIG devices kept (same UUID), destroyed and created."""
    devices = result["mig_devices"]
    if not result["plan"] or devices is None:
        return []
    before, after = result["before"], result["after"] or {}
    head = "GPU %d %s (%s):" % (result["index"], result["name"], result["bus_id"])
    if before["mig_mode"] != after.get("mig_mode") or before["mig_mode_pending"] != after.get("mig_mode_pending"):
        head += " MIG mode %s -> %s%s;" % (before["mig_mode"], after.get("mig_mode"),
                                           " (pending %s: needs a GPU reset)" % after.get("mig_mode_pending")
                                           if after.get("mig_mode") != after.get("mig_mode_pending") else "")
    head += " %d MIG device(s) kept, %d destroyed, %d created" % (len(devices["kept"]), len(devices["destroyed"]),
                                                                  len(devices["created"]))
    lines = [head]
    for verb, items, note in (("keep", devices["kept"], "same UUID: its clients are not disturbed"),
                              ("destroy", devices["destroyed"], None), ("create", devices["created"], None)):
        for item in items:
            placement = item["gpu_instance_placement"]
            where = "GI %s at memory slice%s %s" % (item["gpu_instance_id"] if item["gpu_instance_id"] is not None
                                                    else "(new)", "s" if placement["size"] > 1 else "",
                                                    _slices(placement))
            if item["placement"] is None:
                where += ", no compute instance"
            else:
                where += ", CI %s" % (item["compute_instance_id"] if item["compute_instance_id"] is not None else "(new)")
            uuid = item["uuid"] or ("new UUID" if verb == "create" else "no UUID")
            lines.append("  %-8s %-14s %-46s %s%s" % (verb, item["profile"], where, uuid, " (%s)" % note if note else ""))
    if result["layout_applied"] is False:
        lines.append("  the layout is applied once the pending MIG mode takes effect (GPU reset or reboot)")
    return lines


def _summary(results):
    plan = [step for r in results for step in r["plan"]]
    prepared = [line for r in results for line in _diff_lines(r)]
    diff = {
        "before": "".join(r["slice_map"]["before"] + "\n" for r in results),
        "after": "".join(r["slice_map"]["after"] + "\n" for r in results),
    }
    if prepared:
        diff["prepared"] = "".join(line + "\n" for line in prepared)
    return {
        "changed": any(r["changed"] for r in results),
        "gpus": results,
        "plan": plan,
        "reset_required": any(r["reset_required"] for r in results),
        "reboot_required": any(r["reboot_required"] for r in results),
        "diff": diff,
    }
