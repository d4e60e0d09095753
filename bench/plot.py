#!/usr/bin/python3
"""Plots for adaptlink-sim outputs (Debian's python3-matplotlib; no pip).

  bench/plot.py gantt RUN_DIR/trace.json [--from S] [--to S] [-o gantt.png]
      per-device (and per-link) Gantt chart of a time window of a Chrome trace written by `adaptlink-sim run`
  bench/plot.py planners COMPARE.json [-o planners.png]
      simulated vs predicted throughput per planner, with the ratio to uniform, from `compare --format json`
  bench/plot.py utilization COMPARE.json|report.json [-o utilization.png]
      per-device utilisation (one group of bars per planner for a compare file)

Runs headless (Agg backend). Colours: prefill slices dark, decode slices light, one hue per request.
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        return json.load(f)


def gantt(args):
    trace = load(args.trace)
    events = trace["traceEvents"]
    names = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
    slices = [e for e in events if e.get("ph") == "X"]
    if not slices:
        sys.exit("plot.py: no slices in %s" % args.trace)
    t0 = min(e["ts"] for e in slices) / 1e6
    start = args.start if args.start is not None else t0
    end = args.end if args.end is not None else start + 30.0
    rows = sorted({(e["pid"], e["tid"]) for e in slices if not args.devices_only or e["pid"] == 1},
                  key=lambda r: (r[0], r[1]))
    if args.devices_only:
        slices = [e for e in slices if e["pid"] == 1]
    index = {r: i for i, r in enumerate(rows)}
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(14, 0.45 * len(rows) + 1.6))
    for e in slices:
        s = e["ts"] / 1e6
        d = e["dur"] / 1e6
        if s + d < start or s > end:
            continue
        req = e.get("args", {}).get("request", 0)
        cat = e.get("cat", "")
        base = cmap((2 * req) % 20)
        light = cmap((2 * req + 1) % 20)
        colour = base if cat in ("prefill", "activation") else light
        if cat == "token":
            colour = "0.35"
        y = index[(e["pid"], e["tid"])]
        ax.broken_barh([(s, d)], (y - 0.4, 0.8), facecolors=colour, edgecolor="none")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([("" if r[0] == 1 else "link ") + names.get(r, str(r)) for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(start, end)
    ax.set_xlabel("simulated time (s)")
    other = trace.get("otherData", {})
    title = "%s / %s: %.1f s to %.1f s" % (other.get("scenario", "?"), other.get("planner", "?"), start, end)
    ax.set_title(title + " (dark: prefill, light: decode steps; colour = request)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print("wrote", args.output)


def compare_rows(path):
    data = load(path)
    if "results" not in data:
        sys.exit("plot.py: %s is not a `compare --format json` output" % path)
    return data, [r for r in data["results"] if "report" in r]


def planners(args):
    data, rows = compare_rows(args.compare)
    names = [r["planner"] for r in rows]
    sim = [r["report"]["tokens_per_s"] for r in rows]
    pred = [r["predicted"]["tokens_per_s"] for r in rows]
    ratio = [r.get("ratio_to_uniform") for r in rows]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 3, 4.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], pred, width=0.4, label="predicted (planner replay)", color="0.75")
    bars = ax.bar([i + 0.2 for i in x], sim, width=0.4, label="simulated (SimGrid)", color="tab:blue")
    for b, r in zip(bars, ratio):
        if r is not None:
            ax.annotate("%.2fx" % r, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names)
    ax.set_ylabel("tokens / s")
    ax.set_title("%s: throughput by planner (labels: simulated, x uniform)" % data.get("scenario", "?"))
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print("wrote", args.output)


def utilization(args):
    data = load(args.input)
    if "results" in data:
        reports = [(r["planner"], r["report"]) for r in data["results"] if "report" in r]
        scenario = data.get("scenario", "?")
    else:
        reports = [(data["planner"], data)]
        scenario = data.get("scenario", "?")
    devices = list(reports[0][1]["device_utilization"].keys())
    fig, ax = plt.subplots(figsize=(1.2 * len(devices) * max(1, len(reports)) / 2 + 4, 4.5))
    width = 0.8 / len(reports)
    for k, (name, rep) in enumerate(reports):
        vals = [rep["device_utilization"].get(d, 0) for d in devices]
        ax.bar([i - 0.4 + width * (k + 0.5) for i in range(len(devices))], vals, width=width,
               label="%s (bubble %.2f)" % (name, rep["bubble_fraction"]))
    ax.set_xticks(range(len(devices)))
    ax.set_xticklabels(devices)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("utilisation (steady state)")
    ax.set_title("%s: device utilisation" % scenario)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print("wrote", args.output)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gantt", help="per-device Gantt chart of a trace.json window")
    g.add_argument("trace")
    g.add_argument("--from", dest="start", type=float, help="window start (s; default: first slice)")
    g.add_argument("--to", dest="end", type=float, help="window end (s; default: start + 30)")
    g.add_argument("--devices-only", action="store_true", help="leave out the link rows")
    g.add_argument("-o", "--output", default="gantt.png")
    g.set_defaults(func=gantt)
    c = sub.add_parser("planners", help="throughput by planner from `compare --format json`")
    c.add_argument("compare")
    c.add_argument("-o", "--output", default="planners.png")
    c.set_defaults(func=planners)
    u = sub.add_parser("utilization", help="device utilisation from a compare JSON or a report.json")
    u.add_argument("input")
    u.add_argument("-o", "--output", default="utilization.png")
    u.set_defaults(func=utilization)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
