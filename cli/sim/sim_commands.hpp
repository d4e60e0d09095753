// adaptlink-sim run | compare: the SimGrid back-end's commands (cli/sim/sim_run.cpp). sim_main.cpp calls
// add_sim_commands when built with ADAPTLINK_WITH_SIM.
//
//   run SCENARIO [--planner NAME] [--out DIR] [--seed N] [--network-model M] [--profile FILE]...
//                [--requests N] [--format table|json] [--no-trace] [--trace-from S] [--trace-until S]
//                [--trace-max-events N] [--heartbeat-interval-s S] [--heartbeat-timeout-s S] [--quiet]
//       simulates one plan; writes DIR/{scenario.toml, plan.json, report.json, trace.json}
//       (default DIR: runs/<scenario>/<timestamp>) and prints a summary.
//   compare SCENARIO [--planners a,b,...] [--format table|json] [-o FILE] [--seed N] [--network-model M]
//                    [--profile FILE]... [--requests N] [--heartbeat-interval-s S] [--heartbeat-timeout-s S]
//       simulates each planner's plan on the same workload; table or JSON with ratios to `uniform`.
//
//   sweep SCENARIO --dropout-rate a,b,c [--runs N] [--seed S] [--mean-downtime S] [--out DIR] [--format text|json]
//                  [--planner NAME] [--objective O] [--network-model M] [--requests N] [--profile FILE]...
//                  [--heartbeat-interval-s S] [--heartbeat-timeout-s S] [--no-plot] [--quiet]
//       seeded Monte Carlo dropouts (rates: dropouts per active device per hour), each run simulated with and
//       without backups; prints a table, writes DIR/sweep.json and DIR/sweep.png (cli/sim/sim_sweep.cpp).
//
//   Heartbeat flags override the scenario's [recovery] table (defaults 0.5 s / 1.5 s), as in adaptlink-run.
//
// Exit status: 0 ok, 1 the simulation failed, 2 bad input (scenario, flags, profile, a plan that cannot fit).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

// Registers "run", "compare" and "sweep" on `app`; when one is selected, parsing sets `action` to run it.
void add_sim_commands(CLI::App& app, std::function<int()>& action);
// Registers "sweep" (cli/sim/sim_sweep.cpp); add_sim_commands calls it.
void add_sweep_command(CLI::App& app, std::function<int()>& action);
