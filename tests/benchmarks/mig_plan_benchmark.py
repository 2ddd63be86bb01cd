#!/usr/bin/env python
"""MIG plan benchmark (not a test): instances destroyed by nvidia_mig's planner vs mig-parted's
destroy-all vs an independent brute-force minimum, over every transition between common layouts.

    PYTHONPATH=.build/collections:tests/simulator python3 tests/benchmarks/mig_plan_benchmark.py

"Instances destroyed" counts GPU instances plus compute instances (MIG devices). mig-parted skips a GPU whose
layout already matches and otherwise destroys every instance and recreates the layout.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time

from gpuops_nvml_sim import models

from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_plan as planner

LAYOUTS = {
    "h100-80gb": [{"1g.10gb": 7}, {"1g.20gb": 4}, {"2g.20gb": 3}, {"3g.40gb": 2}, {"4g.40gb": 1}, {"7g.80gb": 1},
                  {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}, {"4g.40gb": 1, "3g.40gb": 1},
                  {"3g.40gb": 1, "1g.10gb": 4}, {"2g.20gb": 2, "1g.10gb": 3}, {"1c.3g.40gb": 3, "3g.40gb": 1},
                  {"1g.10gb+me": 1, "1g.10gb": 6}],
    "h200-141gb": [{"1g.18gb": 7}, {"1g.35gb": 4}, {"2g.35gb": 3}, {"3g.71gb": 2}, {"7g.141gb": 1},
                   {"3g.71gb": 1, "2g.35gb": 1, "1g.18gb": 1}, {"4g.71gb": 1, "3g.71gb": 1},
                   {"3g.71gb": 1, "1g.18gb": 4}],
    "a100-40gb": [{"1g.5gb": 7}, {"1g.10gb": 4}, {"2g.10gb": 3}, {"3g.20gb": 2}, {"7g.40gb": 1},
                  {"3g.20gb": 1, "2g.10gb": 1, "1g.5gb": 1}, {"4g.20gb": 1, "3g.20gb": 1},
                  {"2g.10gb": 2, "1g.5gb": 3}, {"1c.3g.20gb": 3, "3g.20gb": 1}],
    "a100-80gb": [{"1g.10gb": 7}, {"1g.20gb": 4}, {"2g.20gb": 3}, {"3g.40gb": 2}, {"7g.80gb": 1},
                  {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}, {"4g.40gb": 1, "3g.40gb": 1},
                  {"3g.40gb": 1, "1g.10gb": 4}],
    "a30": [{"1g.6gb": 4}, {"2g.12gb": 2}, {"4g.24gb": 1}, {"2g.12gb": 1, "1g.6gb": 2},
            {"2g.12gb+me": 1, "1g.6gb+me": 1, "1g.6gb": 1}, {"1c.2g.12gb": 2, "2g.12gb": 1}],
}


def catalog(model):
    spec = models.model(model)
    return planner.Catalog([{
        "name": p["name"][4:], "id": p["id"], "index": p["index"], "slices": p["sliceCount"],
        "max_instances": p["instanceCount"], "placements": [{"start": s, "size": z} for s, z in p["placements"]],
    } for p in spec["gi_profiles"]])


def realise(cat, layout):
    """The GIs our planner creates for `layout` on an empty GPU (what the GPU looks like afterwards)."""
    plan = planner.plan_gpu(cat, [], planner.expand_layout(cat, layout))
    result = []
    for number, (spec, start) in enumerate(plan.create_gis):
        name, sizes = spec
        starts = plan.new_ci_starts[start]
        result.append({"id": number, "profile": name, "profile_id": cat.profiles[name]["id"],
                       "placement": {"start": start, "size": cat.size(name)},
                       "compute_instances": [{"id": i, "profile": planner.ci_name(name, cat.slices(name), size),
                                              "slices": size, "placement": {"start": s, "size": size}, "uuid": None}
                                             for i, (size, s) in enumerate(zip(sizes, starts))]})
    return result


def destroy_all_cost(current, specs):
    current_specs = sorted((gi["profile"], tuple(sorted((c["slices"] for c in gi["compute_instances"]), reverse=True)))
                           for gi in current)
    if current_specs == sorted(specs):
        return 0
    return sum(len(gi["compute_instances"]) + 1 for gi in current)


def brute_force_minimum(cat, current, specs):
    """Try every subset of existing GIs to keep, every subset of their CIs to keep, every assignment of kept
    GIs to target GIs and every placement of the rest; the cheapest feasible choice."""
    best = None
    for gi_mask in itertools.product([False, True], repeat=len(current)):
        kept_gis = [i for i, keep in enumerate(gi_mask) if keep]
        gi_cost = sum(len(current[i]["compute_instances"]) + 1 for i, keep in enumerate(gi_mask) if not keep)
        cis = [(i, ci) for i in kept_gis for ci in current[i]["compute_instances"]]
        for ci_mask in itertools.product([False, True], repeat=len(cis)):
            cost = gi_cost + sum(1 for keep in ci_mask if not keep)
            if best is not None and cost >= best:
                continue
            kept = dict((i, []) for i in kept_gis)
            for keep, (i, ci) in zip(ci_mask, cis):
                if keep:
                    kept[i].append(ci)
            if feasible(cat, current, kept, specs):
                best = cost
    return best


def feasible(cat, current, kept, specs):
    kept_items = sorted(kept.items())

    def assign(position, remaining, taken):
        if position == len(kept_items):
            counts = {}
            for name, _unused in remaining:
                counts[name] = counts.get(name, 0) + 1
            for index, _unused in kept_items:
                counts[current[index]["profile"]] = counts.get(current[index]["profile"], 0) + 1
            if any(counts[n] > cat.profiles[n]["max_instances"] for n in counts):
                return False
            items = [(s[0], cat.size(s[0])) for s in remaining]
            return planner.place_items(items, lambda i: cat.starts(items[i][0]), taken) is not None
        index, cis = kept_items[position]
        gi = current[index]
        for spec in sorted(set(remaining)):
            if spec[0] != gi["profile"]:
                continue
            wanted = list(spec[1])
            if not all(ci["slices"] in wanted and not wanted.remove(ci["slices"]) for ci in cis):
                continue
            ci_taken = [(ci["placement"]["start"], ci["placement"]["size"]) for ci in cis]
            if planner.place_cis(cat.slices(gi["profile"]), wanted, ci_taken) is None:
                continue
            rest = list(remaining)
            rest.remove(spec)
            if assign(position + 1, rest, taken + [(gi["placement"]["start"], gi["placement"]["size"])]):
                return True
        return False

    return assign(0, list(specs), [])


def main():
    print("%-11s %5s %9s %12s %11s %8s %10s %10s" % ("model", "pairs", "ours", "destroy-all", "brute-min",
                                                     "ours>min", "plan ms avg", "plan ms max"))
    totals = [0, 0, 0, 0, 0]
    all_times = []
    for model, layouts in LAYOUTS.items():
        cat = catalog(model)
        ours = destroy_all = minimum = worse = pairs = 0
        times = []
        for start, target in itertools.product(layouts, repeat=2):
            current = realise(cat, start)
            specs = planner.expand_layout(cat, target)
            began = time.perf_counter()
            plan = planner.plan_gpu(cat, current, specs)
            times.append((time.perf_counter() - began) * 1000)
            best = brute_force_minimum(cat, current, specs)
            pairs += 1
            ours += plan.cost
            destroy_all += destroy_all_cost(current, specs)
            minimum += best
            worse += plan.cost > best
        all_times.extend(times)
        row = (model, pairs, ours, destroy_all, minimum, worse, statistics.mean(times), max(times))
        print("%-11s %5d %9d %12d %11d %8d %10.2f %10.2f" % row)
        for i, value in enumerate((pairs, ours, destroy_all, minimum, worse)):
            totals[i] += value
    row = ("all",) + tuple(totals) + (statistics.mean(all_times), max(all_times))
    print("%-11s %5d %9d %12d %11d %8d %10.2f %10.2f" % row)
    return 1 if totals[4] else 0


if __name__ == "__main__":
    sys.exit(main())
