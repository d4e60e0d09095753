# adaptlink-sim run|compare: bad input is one line on stderr and exit status 2.
if(NOT WITH_SIM)
  return()
endif()
set(out ${BIN}/cli-sim-errors)
file(REMOVE_RECURSE ${out})
file(MAKE_DIRECTORY ${out})
file(WRITE ${out}/bad-profile.json "{\"device\": \"agx\", \"nodes\": [")
set(cases
    "run|${out}/missing.toml"
    "compare|${out}/missing.toml"
    "run|${SRC}/scenarios/jetson-quartet.toml|--planner|nonsense|--out|${out}/x"
    "compare|${SRC}/scenarios/jetson-quartet.toml|--planners|uniform,nonsense"
    "run|${SRC}/scenarios/jetson-quartet.toml|--network-model|warp|--out|${out}/x"
    "run|${SRC}/scenarios/jetson-quartet.toml|--profile|${out}/bad-profile.json|--out|${out}/x"
    "compare|${SRC}/scenarios/jetson-quartet.toml|--profile|${out}/missing-profile.json")
foreach(case IN LISTS cases)
  string(REPLACE "|" ";" args "${case}")
  execute_process(COMMAND ${SIM} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr)
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "${args}: exit ${rc}, expected 2\n${stdout}\n${stderr}")
  endif()
  string(STRIP "${stderr}" line)
  if(line STREQUAL "" OR line MATCHES "\n")
    message(FATAL_ERROR "${args}: expected one line on stderr, got:\n${stderr}")
  endif()
endforeach()
file(REMOVE_RECURSE ${out})
