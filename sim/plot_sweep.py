#!/usr/bin/python3
"""Plot of an `adaptlink-sim sweep` (sweep.json): throughput and p99 latency against the dropout rate, with
backups (switch-over) and without (redeploy). Mean over the runs, error bars one standard deviation, every run
as a faint dot. Debian's python3-matplotlib, headless (Agg).

  sim/plot_sweep.py DIR/sweep.json [-o DIR/sweep.png]
"""
import argparse
import json
import statistics
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("-o", "--output", default="sweep.png")
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"matplotlib is not installed ({e}); apt-get install python3-matplotlib", file=sys.stderr)
        return 3
    with open(args.sweep) as f:
        sweep = json.load(f)

    rates = [r["dropout_rate_per_hour"] for r in sweep["rates"]]
    sides = [("with_backups", "with backups (switch-over)", "tab:blue", "o"),
             ("without_backups", "without backups (redeploy)", "tab:red", "s")]
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, colour, marker in sides:
        for ax, get in ((ax_t, lambda s: s["goodput_rps"]), (ax_l, lambda s: s["latency_ms"]["p99"] / 1e3)):
            means, devs = [], []
            for i, rate in enumerate(rates):
                vals = [get(run[key]) for run in sweep["runs"] if run["rate_index"] == i and "goodput_rps" in run[key]]
                means.append(statistics.mean(vals) if vals else float("nan"))
                devs.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
                ax.scatter([rate] * len(vals), vals, s=8, color=colour, alpha=0.25, linewidths=0)
            ax.errorbar(rates, means, yerr=devs, color=colour, marker=marker, capsize=3, label=label)
    ff = sweep["fault_free"]
    ax_t.axhline(ff["goodput_rps"], color="grey", ls=":", lw=1, label="fault-free")
    ax_l.axhline(ff["latency_ms"]["p99"] / 1e3, color="grey", ls=":", lw=1, label="fault-free")
    ax_t.set_ylabel("throughput (requests / makespan, 1/s)")
    ax_l.set_ylabel("p99 latency (s)")
    for ax in (ax_t, ax_l):
        ax.set_xlabel("dropout rate (per active device per hour)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_ylim(bottom=0)
    fig.suptitle(f"{sweep['scenario']} ({sweep['planner']}): {sweep['runs_per_rate']} runs per rate, "
                 f"{sweep['requests']} requests, mean downtime {sweep['mean_downtime_s']:g} s, seed {sweep['seed']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
