"""Medians of bench/fleet_bench.py's results (JSON lines) as a Markdown table; optional PNG of wall time against N.

  .venv/bin/python bench/report.py .build/bench/results.jsonl
  .build/bench-venv/bin/python bench/report.py .build/bench/results.jsonl --plot docs/img/bench-fleet.png
(matplotlib is only needed for --plot; it comes from PyPI into a separate venv: python3 -m venv .build/bench-venv &&
.build/bench-venv/bin/pip install matplotlib)
"""
import argparse
import json
import statistics
from collections import defaultdict


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--plot")
    a = ap.parse_args()
    rows = [json.loads(line) for line in open(a.results) if line.strip()]
    groups = defaultdict(list)
    for r in rows:
        if r["kind"] in ("first", "idempotent"):
            groups[(r["config"], r["n"], r["kind"])].append(r)
    print("| config | N | run | reps | wall s (median) | per node s | tasks/host | module runs/host | controller CPU s "
          "| KiB sent | KiB received | changed | load avg (1 min) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (cfg, n, kind), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        w = med([r["wall_s"] for r in rs])
        print(f"| {cfg} | {n} | {kind} | {len(rs)} | {w:.1f} | {w / n:.1f} | {rs[0]['tasks_per_host']} "
              f"| {rs[0]['module_runs_per_host']} | {med([r['cpu_s'] for r in rs]):.1f} "
              f"| {med([r['bytes_sent'] for r in rs]) / 1024:.0f} | {med([r['bytes_received'] for r in rs]) / 1024:.0f} "
              f"| {max(r['changed'] for r in rs)} | {med([r['load'] for r in rs]):.1f} |")
    reb = [r for r in rows if r["kind"] == "reboot"]
    if reb:
        print()
        print("| reboots | ok | MPS units | MIG devices | mig-apply s (median) | unit start -> layout + MPS back s (median, max) "
              "| reboot command s (median) |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        print(f"| {len(reb)} | {all(r['ok'] for r in reb)} | {reb[0]['mps_units']} | {reb[0]['mig_devices']} "
              f"| {med([r['mig_apply_s'] for r in reb]):.2f} | {med([r['unit_start_to_ready_s'] for r in reb]):.2f}, "
              f"{max(r['unit_start_to_ready_s'] for r in reb):.2f} | {med([r['reboot_cmd_s'] for r in reb]):.1f} |")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (cfg, kind) in sorted({(k[0], k[2]) for k in groups}):
            pts = sorted((n, med([r["wall_s"] for r in groups[(c, n, k)]])) for (c, n, k) in groups
                         if c == cfg and k == kind)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{cfg}, {kind} converge")
        ax.set_xlabel("simulated 8-GPU nodes (N)")
        ax.set_ylabel("site.yml wall time, s (median)")
        ax.set_title("playbooks/site.yml on simulated H100 nodes (2-core controller, forks 5)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)


if __name__ == "__main__":
    main()
