"""The MIG planner, pure: layout expansion, CI packing, fit explanations, minimal plans, slice maps."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings

from ansible_collections.gpuops.nvidia.plugins.module_utils import _mig_plan as planner
from mig_helpers import catalog_profiles, feasible_layouts

MODELS = ["h100-80gb", "h200-141gb", "a100-40gb", "a100-80gb", "a30"]


def catalog(model="h100-80gb"):
    return planner.Catalog(catalog_profiles(model))


def instances_from(cat, specs_with_starts):
    """Build current GIs (mig_instances format) from [(spec, start)]."""
    result = []
    for number, (spec, start) in enumerate(specs_with_starts):
        name, sizes = spec
        ci_starts = planner.place_cis(cat.slices(name), list(sizes))
        result.append({
            "id": 100 + number, "profile": name, "profile_id": cat.profiles[name]["id"],
            "placement": {"start": start, "size": cat.size(name)},
            "compute_instances": [{"id": i, "profile": planner.ci_name(name, cat.slices(name), size), "slices": size,
                                   "placement": {"start": s, "size": size}, "uuid": "MIG-%d-%d" % (number, i)}
                                  for i, (size, s) in enumerate(zip(sizes, ci_starts))],
        })
    return result


def realise(cat, layout):
    specs = planner.expand_layout(cat, layout)
    plan = planner.plan_gpu(cat, [], specs)
    return instances_from(cat, plan.create_gis)


def spec_of(gi):
    return (gi["profile"], tuple(sorted((ci["slices"] for ci in gi["compute_instances"]), reverse=True)))


def test_expand_plain_and_packed():
    cat = catalog()
    assert planner.expand_layout(cat, {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}) == [
        ("3g.40gb", (3,)), ("2g.20gb", (2,)), ("1g.10gb", (1,))]
    assert planner.expand_layout(cat, {"1c.3g.40gb": 3}) == [("3g.40gb", (1, 1, 1))]
    assert planner.expand_layout(cat, {"1c.3g.40gb": 4}) == [("3g.40gb", (1, 1, 1)), ("3g.40gb", (1,))]
    assert planner.expand_layout(cat, {"2c.3g.40gb": 1, "1c.3g.40gb": 1}) == [("3g.40gb", (2, 1))]
    assert planner.expand_layout(cat, {"3c.3g.40gb": 1}) == [("3g.40gb", (3,))]
    assert planner.expand_layout(cat, {"4c.7g.80gb": 1, "2c.7g.80gb": 1, "1c.7g.80gb": 1}) == [("7g.80gb", (4, 2, 1))]


def test_media_engine_variants_come_from_the_gpu():
    assert planner.expand_layout(catalog(), {"1g.10gb+me": 1}) == [("1g.10gb+me", (1,))]
    assert planner.expand_layout(catalog("a30"), {"2g.12gb+me": 1}) == [("2g.12gb+me", (2,))]
    with pytest.raises(planner.LayoutError) as info:
        planner.expand_layout(catalog(), {"1g.10gb-me": 1})
    assert "1g.10gb+me" in info.value.message and "1g.20gb" in info.value.message
    assert info.value.kind == "unknown_profile"


@pytest.mark.parametrize("layout, words", [
    ({"1g.10gb": 0}, "positive integer"),
    ({"1g.10gb": -2}, "positive integer"),
    ({"1g.10gb": "x"}, "positive integer"),
    ({"1g.10gb": True}, "positive integer"),
    ({"5c.3g.40gb": 1}, "compute-instance forms: 1c.3g.40gb, 2c.3g.40gb, 3g.40gb"),
    ({"9g.1tb": 1}, "unknown MIG profile"),
])
def test_invalid_layouts(layout, words):
    with pytest.raises(planner.LayoutError) as info:
        planner.expand_layout(catalog(), layout)
    assert words in info.value.message


@pytest.mark.parametrize("model, layout, words", [
    ("h100-80gb", {"3g.40gb": 3}, "at most 2"),
    ("h100-80gb", {"4g.40gb": 1, "1g.20gb": 3}, "10 memory slices but this GPU has 8"),
    ("h100-80gb", {"2g.20gb": 3, "1g.10gb": 2}, "8 compute slices but this GPU has 7"),
    ("a30", {"4g.24gb": 1, "1g.6gb": 1}, "memory slices but this GPU has 4"),
])
def test_infeasible_layouts_say_why(model, layout, words):
    cat = catalog(model)
    reason = planner.explain_infeasible(cat, planner.expand_layout(cat, layout))
    assert reason is not None and words in reason, reason


def test_conflicting_placements_are_explained():
    cat = planner.Catalog([
        {"name": "2g.a", "id": 1, "index": 1, "slices": 2, "max_instances": 1, "placements": [{"start": 1, "size": 2}]},
        {"name": "2g.b", "id": 2, "index": 2, "slices": 2, "max_instances": 1, "placements": [{"start": 2, "size": 2}]},
        {"name": "4g.c", "id": 3, "index": 3, "slices": 4, "max_instances": 1, "placements": [{"start": 0, "size": 4}]},
    ])
    reason = planner.explain_infeasible(cat, planner.expand_layout(cat, {"2g.a": 1, "2g.b": 1}))
    assert "profiles conflict" in reason and "2g.a can only start at memory slice 1" in reason


def test_count_formats_are_accepted():
    assert planner.expand_layout(catalog(), {"1g.10gb": "2"}) == [("1g.10gb", (1,))] * 2


def test_plan_keeps_matching_instances_at_their_placement():
    cat = catalog()
    current = realise(cat, {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1})
    plan = planner.plan_gpu(cat, current, planner.expand_layout(cat, {"3g.40gb": 2}))
    assert [gi["profile"] for gi in plan.kept] == ["3g.40gb"]
    assert sorted(gi["profile"] for gi in plan.destroy_gis) == ["1g.10gb", "2g.20gb"]
    assert plan.create_gis == [(("3g.40gb", (3,)), 4)]


def test_plan_reuses_a_gi_for_compute_instances():
    cat = catalog()
    current = realise(cat, {"1c.3g.40gb": 2})
    plan = planner.plan_gpu(cat, current, planner.expand_layout(cat, {"1c.3g.40gb": 3}))
    assert not plan.destroy_gis and not plan.destroy_cis and not plan.create_gis
    assert [(c[2], c[3]) for c in plan.create_cis] == [(1, 2)]


def test_plan_destroys_fewest_when_kept_instances_block():
    cat = catalog()
    # 1g at slices 0 and 4: a 4g (needs 0-3) forces the first one out, the other stays.
    current = instances_from(cat, [(("1g.10gb", (1,)), 0), (("1g.10gb", (1,)), 4)])
    plan = planner.plan_gpu(cat, current, planner.expand_layout(cat, {"4g.40gb": 1, "1g.10gb": 2}))
    assert [gi["placement"]["start"] for gi in plan.destroy_gis] == [0]
    assert [gi["placement"]["start"] for gi in plan.kept] == [4]
    assert plan.cost == 2


def test_plan_is_deterministic():
    cat = catalog()
    current = realise(cat, {"1g.10gb": 7})
    first = planner.plan_gpu(cat, current, planner.expand_layout(cat, {"2g.20gb": 2, "1g.10gb": 3}))
    for _unused in range(3):
        again = planner.plan_gpu(cat, current, planner.expand_layout(cat, {"2g.20gb": 2, "1g.10gb": 3}))
        assert [g["id"] for g in again.destroy_gis] == [g["id"] for g in first.destroy_gis]
        assert again.create_gis == first.create_gis


def test_slice_map_is_fixed_width():
    cat = catalog()
    one = planner.slice_map(realise(cat, {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 1}), 8)
    two = planner.slice_map(realise(cat, {"1c.3g.40gb": 3}), 8)
    empty = planner.slice_map([], 8)
    assert len(one) == len(two) == len(empty) == 8 * planner.SLICE_WIDTH + 9
    assert one.startswith("[3g.40gb ") and "|2g.20gb " in one and "|1g.10gb   |          ]" in one
    assert "3g.40gb 3x1c" in two


# -- property: random start/target layouts ----------------------------------------------------------------

def brute_force_minimum(cat, current, specs):
    """Fewest instances (GIs + CIs) destroyed by keeping whole GIs that exactly match a target spec."""
    best = None
    for keep_mask in itertools.product([False, True], repeat=len(current)):
        remaining = list(specs)
        ok = True
        taken = []
        for gi, keep in zip(current, keep_mask):
            if keep:
                if spec_of(gi) not in remaining:
                    ok = False
                    break
                remaining.remove(spec_of(gi))
                taken.append((gi["placement"]["start"], gi["placement"]["size"]))
        if not ok:
            continue
        items = [(s[0], cat.size(s[0])) for s in remaining]
        if planner.place_items(items, lambda i: cat.starts(items[i][0]), taken) is None:
            continue
        counts = {}
        for s in specs:
            counts[s[0]] = counts.get(s[0], 0) + 1
        if any(counts[n] > cat.profiles[n]["max_instances"] for n in counts):
            continue
        cost = sum(len(gi["compute_instances"]) + 1 for gi, keep in zip(current, keep_mask) if not keep)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("model", MODELS)
def test_random_transitions_reach_target_with_minimal_destruction(model):
    cat = catalog(model)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(start=feasible_layouts(model, 8), target=feasible_layouts(model, 8))
    def check(start, target):
        current = realise(cat, start)
        specs = planner.expand_layout(cat, target)
        plan = planner.plan_gpu(cat, current, specs)
        after = planner.predicted_instances(cat, plan)
        assert sorted(spec_of(gi) for gi in after) == sorted(specs)
        occupied = []
        for gi in after:
            start_, size = gi["placement"]["start"], gi["placement"]["size"]
            assert {"start": start_, "size": size} in cat.profiles[gi["profile"]]["placements"]
            assert not planner._overlaps(start_, size, occupied)
            occupied.append((start_, size))
        assert plan.cost <= brute_force_minimum(cat, current, specs)
        # an exactly matching GI that some optimal plan can keep is never destroyed for nothing
        if start == target:
            assert plan.cost == 0 and not plan.changes

    check()
