# adaptlink-sim sweep: table, DIR/sweep.json (same seed -> identical file), rate 0 = the fault-free `run`,
# nothing lost, the plot (or one line saying why not), and exit status 2 with one line on bad input.
if(NOT WITH_SIM)
  return()
endif()
set(out ${BIN}/cli-sim-sweep)
file(REMOVE_RECURSE ${out})
set(scenario ${SRC}/scenarios/jetson-quartet.toml)

foreach(n 1 2)
  execute_process(COMMAND ${SIM} sweep ${scenario} --dropout-rate 0,30 --runs 2 --seed 5 --requests 12 --out ${out}/${n}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sweep failed (${rc}):\n${stdout}\n${stderr}")
  endif()
  if(NOT EXISTS ${out}/${n}/sweep.json)
    message(FATAL_ERROR "sweep did not write sweep.json:\n${stdout}")
  endif()
  # The plot, or one line saying why it was not written; the command succeeds either way.
  if(NOT EXISTS ${out}/${n}/sweep.png AND NOT stderr MATCHES "sweep.png not written: ")
    message(FATAL_ERROR "neither sweep.png nor a reason:\n${stderr}")
  endif()
endforeach()
if(NOT stdout MATCHES "rate/h +dropouts" OR NOT stdout MATCHES "\n30 +[0-9]+ +[0-9]+ +0\\.[0-9]+")
  message(FATAL_ERROR "no sweep table:\n${stdout}")
endif()
if(NOT stderr MATCHES "sweep: rate 30/h done")
  message(FATAL_ERROR "no progress on stderr:\n${stderr}")
endif()
file(READ ${out}/1/sweep.json a)
file(READ ${out}/2/sweep.json b)
if(NOT a STREQUAL b)
  message(FATAL_ERROR "same seed, different sweep.json")
endif()

# Rate 0 equals a fault-free run of the same plan.
execute_process(COMMAND ${SIM} run ${scenario} --requests 12 --no-trace --quiet --out ${out}/run
                RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "run failed (${rc}): ${stderr}")
endif()
file(READ ${out}/run/report.json report)
string(JSON run_rps GET "${report}" throughput_rps)
string(JSON run_p99 GET "${report}" latency_ms p99)
string(JSON nruns LENGTH "${a}" runs)
math(EXPR last "${nruns} - 1")
foreach(i RANGE ${last})
  string(JSON rate GET "${a}" runs ${i} dropout_rate_per_hour)
  foreach(side with_backups without_backups)
    string(JSON lost GET "${a}" runs ${i} ${side} requests_lost)
    string(JSON done GET "${a}" runs ${i} ${side} requests_completed)
    if(NOT lost EQUAL 0 OR NOT done EQUAL 12)
      message(FATAL_ERROR "run ${i} ${side}: ${done} completed, ${lost} lost")
    endif()
    if(rate EQUAL 0)
      string(JSON rps GET "${a}" runs ${i} ${side} throughput_rps)
      string(JSON p99 GET "${a}" runs ${i} ${side} latency_ms p99)
      if(NOT rps STREQUAL run_rps OR NOT p99 STREQUAL run_p99)
        message(FATAL_ERROR "rate 0 (${rps} rps, p99 ${p99}) differs from run (${run_rps} rps, p99 ${run_p99})")
      endif()
    endif()
  endforeach()
endforeach()
# At 30 dropouts per device per hour, backups keep more throughput than redeploying.
string(JSON with GET "${a}" rates 1 with_backups mean_goodput_rps)
string(JSON without GET "${a}" rates 1 without_backups mean_goodput_rps)
string(JSON dropouts GET "${a}" rates 1 dropouts)
if(dropouts EQUAL 0 OR with LESS without)
  message(FATAL_ERROR "rate 30: ${dropouts} dropouts, with backups ${with} rps, without ${without} rps")
endif()

# --format json prints sweep.json; --no-plot writes no plot.
execute_process(COMMAND ${SIM} sweep ${scenario} --dropout-rate 6 --runs 1 --requests 12 --format json --no-plot -q
                        --out ${out}/3
                RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
if(NOT rc EQUAL 0 OR EXISTS ${out}/3/sweep.png OR NOT stderr STREQUAL "")
  message(FATAL_ERROR "sweep --format json --no-plot -q (${rc}): ${stderr}")
endif()
string(JSON unit GET "${stdout}" rate_unit)
if(NOT unit MATCHES "per active device per hour")
  message(FATAL_ERROR "sweep --format json: ${unit}")
endif()

execute_process(COMMAND ${SIM} sweep --help RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
if(NOT rc EQUAL 0 OR NOT stdout MATCHES "--dropout-rate" OR NOT stdout MATCHES "--runs")
  message(FATAL_ERROR "sweep --help (${rc}):\n${stdout}")
endif()

# Bad input: one line on stderr, exit status 2.
set(cases
    "sweep|${scenario}"
    "sweep|${scenario}|--dropout-rate|"
    "sweep|${scenario}|--dropout-rate|,"
    "sweep|${scenario}|--dropout-rate=-1"
    "sweep|${scenario}|--dropout-rate|1,-2"
    "sweep|${scenario}|--dropout-rate|1,x"
    "sweep|${scenario}|--dropout-rate|1|--runs|0"
    "sweep|${scenario}|--dropout-rate|1|--mean-downtime|0"
    "sweep|${out}/missing.toml|--dropout-rate|1"
    "sweep|${scenario}|--dropout-rate|1|--profile|${out}/missing-profile.json")
foreach(case IN LISTS cases)
  string(REPLACE "|" ";" args "${case}")
  execute_process(COMMAND ${SIM} ${args} --out ${out}/bad RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "${args}: exit ${rc}, expected 2\n${stdout}\n${stderr}")
  endif()
  string(STRIP "${stderr}" line)
  if(line STREQUAL "" OR line MATCHES "\n")
    message(FATAL_ERROR "${args}: expected one line on stderr, got:\n${stderr}")
  endif()
endforeach()
file(REMOVE_RECURSE ${out})
