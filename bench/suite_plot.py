#!/usr/bin/env python3
"""Draw the suite's figures from bench/results/suite.json (written by bench/run-suite).

    suite_plot.py SUITE.json OUTDIR

  OUTDIR/suite_ratio_uniform.png  throughput / uniform's per scenario and planner (scenarios where
                                  uniform is feasible; log scale), predicted bars, simulated dots
  OUTDIR/suite_ratio_bound.png    throughput / the aggregate-compute bound per scenario and planner
                                  (every scenario; compute-bound ones marked with *)
Needs matplotlib (python3-matplotlib).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

COLORS = {"uniform": "#9e9e9e", "proportional": "#80cbc4", "memory": "#b39ddb", "edgeshard": "#ffb74d",
          "pipeedge": "#64b5f6", "adaptlink": "#d32f2f"}


def grouped(ax, names, planners, value, sim_value, log):
    n = len(planners)
    height = 0.8 / n
    for k, p in enumerate(planners):
        ys = [i - 0.4 + height * (k + 0.5) for i in range(len(names))]
        vals = [value(name, p) for name in names]
        ax.barh([y for y, v in zip(ys, vals) if v], [v for v in vals if v], height=height, color=COLORS.get(p),
                label=p)
        sims = [sim_value(name, p) for name in names]
        pts = [(s, y) for y, s in zip(ys, sims) if s]
        if pts:
            ax.plot([s for s, _ in pts], [y for _, y in pts], "k.", markersize=2.5)
        for y, v in zip(ys, vals):
            if v is None:
                ax.text(0.02, y, "infeasible", transform=ax.get_yaxis_transform(), fontsize=5, va="center",
                        color=COLORS.get(p))
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.grid(axis="x", alpha=0.3)


def main():
    doc = json.load(open(sys.argv[1]))
    outdir = sys.argv[2]
    planners = doc["planners"]
    sc = {n: s for n, s in doc["scenarios"].items() if "planners" in s}
    summ = doc["summary"]

    def field(name, p, key):
        return sc[name]["planners"][p].get(key)

    # 1. Ratio to uniform.
    names = [n for n in sc if sc[n].get("uniform_feasible")]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(names) + 1.6))
    shown = [p for p in planners if p != "uniform"]
    grouped(ax, names, shown, lambda n, p: field(n, p, "ratio_to_uniform"),
            lambda n, p: field(n, p, "sim_ratio_to_uniform"), log=True)
    ax.axvline(1.0, color="k", linewidth=0.8)
    ticks = [0.8, 1, 1.25, 1.5, 2, 3, 5, 8, 12]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("throughput / uniform (bars: predicted; dots: simulated)", labelpad=18)
    geo = ", ".join(f"{p} {summ['geomean_ratio_to_uniform'][p]['value']:.2f}" for p in shown
                    if summ["geomean_ratio_to_uniform"][p]["value"])
    ax.set_title(f"Planner suite: ratio to uniform ({len(names)} scenarios where uniform fits)\n"
                 f"geometric mean (predicted): {geo}", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=len(shown), frameon=False)
    fig.tight_layout()
    p1 = os.path.join(outdir, "suite_ratio_uniform.png")
    fig.savefig(p1, dpi=130)
    plt.close(fig)

    # 2. Ratio to the aggregate-compute bound.
    names = list(sc)
    labels = [n + (" *" if sc[n].get("compute_bound") else "") for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(names) + 1.6))
    grouped(ax, names, planners, lambda n, p: field(n, p, "ratio_to_bound"),
            lambda n, p: field(n, p, "sim_ratio_to_bound"), log=False)
    ax.set_yticklabels(labels, fontsize=7)
    ax.axvline(0.85, color="k", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("throughput / aggregate-compute bound (sum of each device alone; bars: predicted; dots: simulated)",
                  labelpad=18)
    ax.set_title("Planner suite: ratio to the aggregate-compute bound (* compute-bound scenario; dashed: 0.85)",
                 fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=len(planners), frameon=False)
    fig.tight_layout()
    p2 = os.path.join(outdir, "suite_ratio_bound.png")
    fig.savefig(p2, dpi=130)
    plt.close(fig)
    print(f"wrote {p1} and {p2}")


if __name__ == "__main__":
    main()
