# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MIG layout planning: pure functions, no NVML and no Ansible.

A *layout* is mig-parted's map of MIG device profile -> count (`{"3g.40gb": 1, "1c.3g.40gb": 2}`).
It expands into *GI specs*: `(gpu instance profile name, compute-instance sizes)`, where the sizes are
compute slices in descending order; a plain `3g.40gb` is `("3g.40gb", (3,))` (one full CI) and CI-qualified
devices of one GI profile are packed into as few shared GIs as fit (`{"1c.3g.40gb": 3}` ->
`[("3g.40gb", (1, 1, 1))]`).

`plan_gpu()` compares the GIs that exist with the target specs, keeps every GI (and CI) it can, destroys
the fewest instances that let the rest fit, and places the new GIs and CIs explicitly. It searches every
keep/destroy assignment (a GPU has at most 8 memory slices, so at most 7 GIs), so the result is minimal
and deterministic.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError

# Compute-instance sizes (compute slices) a GPU instance of N compute slices offers, and the
# NVML_COMPUTE_INSTANCE_PROFILE_* index of each size.
CI_SIZES_FOR_GI = {1: (1,), 2: (1, 2), 3: (1, 2, 3), 4: (1, 2, 4), 6: (1, 2, 3, 6), 7: (1, 2, 3, 4, 7),
                   8: (1, 2, 4, 8)}
CI_PROFILE_INDEX = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}

_KEY = re.compile(r"^(?:([0-9]+)c\.)?([0-9]+g\..+)$")


class LayoutError(GpuopsError):
    """A layout that is invalid or cannot fit a GPU; the message says why."""

    def __init__(self, message, kind="invalid_layout"):
        super(LayoutError, self).__init__(message, kind=kind)


def placement_text(start, size):
    return "%d:%d" % (start, size)


class Catalog:
    """The GPU-instance profiles of one GPU (from `_gpu_info.gpu_instance_profiles`)."""

    def __init__(self, profiles):
        self.profiles = dict((p["name"], p) for p in profiles)
        self.by_id = dict((p["id"], p) for p in profiles)
        self.names = [p["name"] for p in profiles]
        ends = [pl["start"] + pl["size"] for p in profiles for pl in p["placements"]]
        self.memory_slices = max(ends) if ends else 0
        self.compute_slices = max([p["slices"] for p in profiles] or [0])

    def size(self, name):
        """Memory slices a GI of this profile occupies."""
        placements = self.profiles[name]["placements"]
        return placements[0]["size"] if placements else 0

    def starts(self, name):
        return sorted(pl["start"] for pl in self.profiles[name]["placements"])

    def slices(self, name):
        return self.profiles[name]["slices"]

    def valid_keys(self):
        """Every layout key this GPU accepts: GI profiles and their CI-qualified forms."""
        keys = list(self.names)
        for name in self.names:
            for size in CI_SIZES_FOR_GI.get(self.slices(name), ()):
                if size != self.slices(name):
                    keys.append("%dc.%s" % (size, name))
        return keys


def ci_name(gi_profile, gi_slices, size):
    return gi_profile if size == gi_slices else "%dc.%s" % (size, gi_profile)


def default_ci_starts(gi_slices, size):
    """CI placements NVML offers inside a GI (used for planning; execution asks NVML)."""
    return list(range(0, gi_slices - size + 1, size))


def _overlaps(start, size, taken):
    return any(start < t_start + t_size and t_start < start + size for t_start, t_size in taken)


def place_items(items, candidates, taken):
    """Backtracking placement: items[i] has size items[i][1] and candidate starts candidates(i).

    Returns the list of starts (in `items` order) or None. Candidate order decides which solution wins,
    so the result is deterministic.
    """
    order = sorted(range(len(items)), key=lambda i: (len(candidates(i)), -items[i][1], i))
    chosen = {}
    taken = list(taken)

    def solve(position):
        if position == len(order):
            return True
        index = order[position]
        size = items[index][1]
        for start in candidates(index):
            if not _overlaps(start, size, taken):
                taken.append((start, size))
                chosen[index] = start
                if solve(position + 1):
                    return True
                taken.pop()
        return False

    if not solve(0):
        return None
    return [chosen[i] for i in range(len(items))]


def place_cis(gi_slices, sizes, taken=(), starts=None):
    """Starts for CIs of `sizes` in a GI of `gi_slices` next to `taken` (start, size) CIs, or None."""
    starts = starts or default_ci_starts
    items = [(None, size) for size in sizes]
    return place_items(items, lambda i: starts(gi_slices, items[i][1]), taken)


def layout_count(key, count):
    """A layout count as an int; LayoutError unless it is a positive whole number (0: omit the profile)."""
    if isinstance(count, bool) or not isinstance(count, int):
        try:
            if isinstance(count, bool) or float(count) != int(count):
                raise ValueError
            count = int(count)
        except (TypeError, ValueError):
            raise LayoutError("layout: the count for %s must be a positive integer, got %r" % (key, count))
    if count <= 0:
        raise LayoutError("layout: the count for %s must be a positive integer (omit the profile to have "
                          "none), got %d" % (key, count))
    return count


def expand_layout(catalog, layout, where="this GPU"):
    """Layout dict -> sorted list of GI specs; LayoutError if a key or count is invalid here."""
    if not isinstance(layout, dict):
        raise LayoutError("layout must be a mapping of MIG profile to count, got %r" % (layout,))
    plain = []
    qualified = {}
    for key in sorted(layout, key=str):
        count = layout_count(key, layout[key])
        match = _KEY.match(str(key).strip())
        gi_name = match.group(2) if match else None
        if gi_name not in catalog.profiles:
            raise LayoutError("unknown MIG profile %r on %s; valid profiles: %s"
                              % (key, where, ", ".join(catalog.valid_keys())), kind="unknown_profile")
        gi_slices = catalog.slices(gi_name)
        if match.group(1) is None or int(match.group(1)) == gi_slices:
            plain.extend([(gi_name, (gi_slices,))] * count)
            continue
        size = int(match.group(1))
        if size not in CI_SIZES_FOR_GI.get(gi_slices, ()):
            valid = ["%dc.%s" % (s, gi_name) for s in CI_SIZES_FOR_GI.get(gi_slices, ()) if s != gi_slices]
            raise LayoutError("unknown MIG profile %r on %s: a %s GPU instance has %d compute slice(s); valid "
                              "compute-instance forms: %s" % (key, where, gi_name, gi_slices,
                                                              ", ".join(valid + [gi_name])),
                              kind="unknown_profile")
        qualified.setdefault(gi_name, []).extend([size] * count)
    specs = list(plain)
    for gi_name in sorted(qualified):
        gi_slices = catalog.slices(gi_name)
        bins = []
        for size in sorted(qualified[gi_name], reverse=True):
            for members in bins:
                if place_cis(gi_slices, members + [size]) is not None:
                    members.append(size)
                    break
            else:
                bins.append([size])
        specs.extend((gi_name, tuple(sorted(members, reverse=True))) for members in bins)
    return sort_specs(catalog, specs)


def sort_specs(catalog, specs):
    return sorted(specs, key=lambda s: (-catalog.size(s[0]), -catalog.slices(s[0]), s[0], -len(s[1]), s[1]))


def spec_devices(catalog, specs):
    """GI specs -> mig-parted style counts {"3g.40gb": 1, "1c.3g.40gb": 2}."""
    counts = {}
    for name, sizes in specs:
        for size in sizes:
            key = ci_name(name, catalog.slices(name), size)
            counts[key] = counts.get(key, 0) + 1
    return counts


def explain_infeasible(catalog, specs, where="this GPU"):
    """Why `specs` cannot fit on an empty GPU, or None if they fit."""
    counts = {}
    for name, _unused in specs:
        counts[name] = counts.get(name, 0) + 1
    for name in sorted(counts):
        limit = catalog.profiles[name]["max_instances"]
        if counts[name] > limit:
            return ("the layout needs %d GPU instances of %s but %s allows at most %d"
                    % (counts[name], name, where, limit))
    memory = sum(catalog.size(name) for name, _unused in specs)
    if memory > catalog.memory_slices:
        return ("the layout needs %d memory slices but %s has %d (%s)"
                % (memory, where, catalog.memory_slices,
                   ", ".join("%s uses %d" % (n, catalog.size(n)) for n in sorted(counts))))
    compute = sum(catalog.slices(name) for name, _unused in specs)
    if compute > catalog.compute_slices:
        return ("the layout needs %d compute slices but %s has %d"
                % (compute, where, catalog.compute_slices))
    items = [(name, catalog.size(name)) for name, _unused in specs]
    if place_items(items, lambda i: catalog.starts(items[i][0]), []) is None:
        return ("the profiles conflict: no arrangement of their placements fits on %s (%s)"
                % (where, "; ".join("%s can only start at memory slice %s" % (
                    n, "/".join(str(s) for s in catalog.starts(n))) for n in sorted(counts))))
    return None


class GpuPlan:
    """The outcome of planning one GPU's instances."""

    def __init__(self):
        self.kept = []          # current GI dicts kept (possibly with some CIs destroyed / added)
        self.destroy_gis = []   # current GI dicts destroyed (with all their CIs)
        self.destroy_cis = []   # (gi dict, ci dict) destroyed inside kept GIs
        self.create_gis = []    # (spec, start)
        self.create_cis = []    # (gi start, gi profile, size, planned ci start) in kept GIs
        self.new_ci_starts = {}  # gi start -> [planned ci starts] for created GIs
        self.cost = 0

    @property
    def changes(self):
        return bool(self.destroy_gis or self.destroy_cis or self.create_gis or self.create_cis)


def _gi_sizes(gi):
    return sorted((ci["slices"] for ci in gi["compute_instances"]), reverse=True)


def _keep_option(catalog, gi, spec):
    """Keeping `gi` for `spec`: (CIs destroyed, CIs retained, [(size, start)] CIs to create) or None."""
    gi_slices = catalog.slices(gi["profile"])
    wanted = list(spec[1])
    retained = []
    for ci in sorted(gi["compute_instances"], key=lambda c: (c["placement"]["start"], c["id"])):
        if ci["slices"] in wanted:
            wanted.remove(ci["slices"])
            retained.append(ci)
    taken = [(ci["placement"]["start"], ci["placement"]["size"]) for ci in retained]
    starts = place_cis(gi_slices, wanted, taken)
    if starts is None:
        retained = []
        wanted = list(spec[1])
        starts = place_cis(gi_slices, wanted)
        if starts is None:
            return None
    destroyed = [ci for ci in gi["compute_instances"] if ci not in retained]
    return destroyed, retained, list(zip(wanted, starts))


def plan_gpu(catalog, current, specs, where="this GPU"):
    """Minimal-disruption plan from `current` GIs (mig_instances format) to target `specs`."""
    groups = []
    for spec in specs:
        if spec not in groups:
            groups.append(spec)
    capacity = dict((spec, specs.count(spec)) for spec in groups)
    current = sorted(current, key=lambda g: (g["placement"]["start"], g["id"]))

    # Options per current GI: keep for a spec group (cost: CIs destroyed) or destroy (cost: CIs + 1).
    options = []
    for gi in current:
        choices = []
        for spec in groups:
            if spec[0] == gi["profile"]:
                keep = _keep_option(catalog, gi, spec)
                if keep is not None:
                    choices.append((len(keep[0]), spec, keep))
        choices.sort(key=lambda c: c[0])
        choices.append((len(gi["compute_instances"]) + 1, None, None))
        options.append(choices)

    assignments = []

    def enumerate_(position, used, picked, cost):
        if position == len(current):
            assignments.append((cost, len(assignments), list(picked)))
            return
        for choice in options[position]:
            spec = choice[1]
            if spec is not None and used.get(spec, 0) >= capacity[spec]:
                continue
            if spec is not None:
                used[spec] = used.get(spec, 0) + 1
            picked.append(choice)
            enumerate_(position + 1, used, picked, cost + choice[0])
            picked.pop()
            if spec is not None:
                used[spec] -= 1

    enumerate_(0, {}, [], 0)
    assignments.sort(key=lambda a: (a[0], sum(1 for c in a[2] if c[1] is None), a[1]))

    for cost, _unused, picked in assignments:
        remaining = list(specs)
        taken = []
        for gi, choice in zip(current, picked):
            if choice[1] is not None:
                remaining.remove(choice[1])
                taken.append((gi["placement"]["start"], gi["placement"]["size"]))
        counts = {}
        for gi, choice in zip(current, picked):
            if choice[1] is not None:
                counts[gi["profile"]] = counts.get(gi["profile"], 0) + 1
        for name, _unused in remaining:
            counts[name] = counts.get(name, 0) + 1
        if any(counts[n] > catalog.profiles[n]["max_instances"] for n in counts):
            continue
        remaining = sort_specs(catalog, remaining)
        items = [(spec[0], catalog.size(spec[0])) for spec in remaining]
        starts = place_items(items, lambda i: catalog.starts(items[i][0]), taken)
        if starts is None:
            continue
        plan = GpuPlan()
        plan.cost = cost
        for gi, choice in zip(current, picked):
            if choice[1] is None:
                plan.destroy_gis.append(gi)
                continue
            plan.kept.append(gi)
            destroyed, _unused, creates = choice[2]
            plan.destroy_cis.extend((gi, ci) for ci in destroyed)
            plan.create_cis.extend((gi["placement"]["start"], gi["profile"], size, start)
                                   for size, start in creates)
        for spec, start in sorted(zip(remaining, starts), key=lambda x: x[1]):
            plan.create_gis.append((spec, start))
            plan.new_ci_starts[start] = place_cis(catalog.slices(spec[0]), list(spec[1]))
        return plan
    reason = explain_infeasible(catalog, specs, "the GPU") or "no placement fits"
    raise LayoutError("layout cannot fit on %s: %s" % (where, reason), kind="does_not_fit")


def predicted_instances(catalog, plan):
    """The GIs (mig_instances format, ids unknown) a plan leaves, for check mode."""
    result = []
    destroyed_ci_ids = set((id(gi), ci["id"]) for gi, ci in plan.destroy_cis)
    for gi in plan.kept:
        cis = [dict(ci) for ci in gi["compute_instances"] if (id(gi), ci["id"]) not in destroyed_ci_ids]
        for gi_start, name, size, start in plan.create_cis:
            if gi_start == gi["placement"]["start"]:
                cis.append({"id": None, "profile": ci_name(name, catalog.slices(name), size), "slices": size,
                            "placement": {"start": start, "size": size}, "uuid": None})
        cis.sort(key=lambda c: c["placement"]["start"])
        new = dict(gi)
        new["compute_instances"] = cis
        result.append(new)
    for spec, start in plan.create_gis:
        name = spec[0]
        profile = catalog.profiles[name]
        cis = [{"id": None, "profile": ci_name(name, profile["slices"], size), "slices": size,
                "placement": {"start": ci_start, "size": size}, "uuid": None}
               for size, ci_start in zip(spec[1], plan.new_ci_starts[start])]
        cis.sort(key=lambda c: c["placement"]["start"])
        result.append({"id": None, "profile": name, "profile_id": profile["id"],
                       "placement": {"start": start, "size": catalog.size(name)}, "compute_instances": cis})
    result.sort(key=lambda g: g["placement"]["start"])
    return result


def instances_devices(instances):
    """Existing GIs -> mig-parted style counts."""
    counts = {}
    for gi in instances:
        for ci in gi["compute_instances"]:
            counts[ci["profile"]] = counts.get(ci["profile"], 0) + 1
    return counts


SLICE_WIDTH = 10


def slice_map(instances, memory_slices, mode_text=None):
    """Fixed-width map of the memory slices: one cell of SLICE_WIDTH characters per slice.

    `[3g.40gb x3                           |2g.20gb              |1g.10gb   |          ]`
    A GI spans as many cells as memory slices (separators included); a GI holding several compute
    instances shows them after its name (`3g.40gb 3x1c`); free slices are blank.
    """
    if mode_text:
        return "[%s]" % mode_text
    if not memory_slices:
        return "[no MIG]"
    cells = []
    position = 0
    for gi in sorted(instances, key=lambda g: g["placement"]["start"]):
        start, size = gi["placement"]["start"], gi["placement"]["size"]
        while position < start:
            cells.append(" " * SLICE_WIDTH)
            position += 1
        label = gi["profile"]
        sizes = [ci["slices"] for ci in gi["compute_instances"]]
        full = [ci for ci in gi["compute_instances"] if ci["profile"] == gi["profile"]]
        if not sizes:
            label += " (no CI)"
        elif not (len(sizes) == 1 and full):
            parts = []
            for ci_size in sorted(set(sizes), reverse=True):
                parts.append("%dx%dc" % (sizes.count(ci_size), ci_size))
            label += " " + "+".join(parts)
        width = SLICE_WIDTH * size + (size - 1)
        if len(label) > width:
            label = label[:width - 1] + "~"
        cells.append(label.ljust(width))
        position = start + size
    while position < memory_slices:
        cells.append(" " * SLICE_WIDTH)
        position += 1
    return "[" + "|".join(cells) + "]"
