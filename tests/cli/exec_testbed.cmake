# adaptlink-run testbed end to end on a tiny fixture: worker processes over ZeroMQ, a worker killed with
# SIGKILL while 4 requests are in flight. Every request completes with the tokens of the fault-free run, with a
# backup (switch-over) and without one (redeploy); faults[] is filled; a device lost twice, a backup holder lost
# first, and the last copy lost (a clear error, no hang). Run by CTest with -DBIN=<build dir> -DSRC=<source dir>.
if(NOT WITH_TORCH)
  message(STATUS "libtorch back-end not built: skipped")
  return()
endif()
set(run ${BIN}/exec/adaptlink-run)
set(fx ${SRC}/tests/fixtures/llava_llama_mha_tied)
set(data ${SRC}/tests/data/testbed)
set(work ${BIN}/tests/exec_testbed)
file(REMOVE_RECURSE ${work})

function(testbed scenario out)
  execute_process(COMMAND ${run} testbed --scenario ${data}/${scenario}.toml --model ${fx} --quiet
                          --heartbeat-timeout-s 2 --out ${work}/${out} ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr TIMEOUT 120)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "testbed ${scenario} ${ARGN}: exit ${rc}\n${stdout}\n${stderr}")
  endif()
  message(STATUS "testbed ${scenario} ${ARGN}:\n${stdout}")
endfunction()

# The generated token lists of outputs.jsonl, one per line, as a CMake list of "id:t1,t2,..." entries.
function(read_outputs out var)
  file(READ ${work}/${out}/outputs.jsonl text)
  string(REPLACE ";" "," text "${text}")  # decoded text may hold ';', CMake's list separator
  string(REPLACE "\n" ";" lines "${text}")
  set(result "")
  foreach(line IN LISTS lines)
    if(line STREQUAL "")
      continue()
    endif()
    string(JSON id GET "${line}" id)
    string(JSON n LENGTH "${line}" generated)
    set(tokens "")
    if(n GREATER 0)
      math(EXPR last "${n} - 1")
      foreach(i RANGE ${last})
        string(JSON t GET "${line}" generated ${i})
        string(APPEND tokens "${t},")
      endforeach()
    endif()
    list(APPEND result "${id}:${tokens}")
  endforeach()
  set(${var} "${result}" PARENT_SCOPE)
endfunction()

function(expect_same_outputs baseline out)
  read_outputs(${baseline} want)
  read_outputs(${out} got)
  list(LENGTH want n)
  if(n EQUAL 0)
    message(FATAL_ERROR "${baseline}: no outputs")
  endif()
  if(NOT "${want}" STREQUAL "${got}")
    message(FATAL_ERROR "${out}: outputs differ from the fault-free run\nwant ${want}\ngot  ${got}")
  endif()
endfunction()

# report.json: all requests completed, none lost, and `faults` entries with every field set.
function(expect_recovered out requests faults)
  file(READ ${work}/${out}/report.json report)
  string(JSON done GET "${report}" requests_completed)
  string(JSON lost GET "${report}" requests_lost)
  if(NOT done EQUAL requests OR NOT lost EQUAL 0)
    message(FATAL_ERROR "${out}: ${done} completed, ${lost} lost (want ${requests}, 0)")
  endif()
  string(JSON n LENGTH "${report}" faults)
  if(NOT n EQUAL faults)
    message(FATAL_ERROR "${out}: ${n} fault entries, want ${faults}\n${report}")
  endif()
  math(EXPR last "${n} - 1")
  foreach(i RANGE ${last})
    foreach(key at_s detected_s recovered_s recovery_ms)
      string(JSON type TYPE "${report}" faults ${i} ${key})
      if(NOT type STREQUAL "NUMBER")
        message(FATAL_ERROR "${out}: faults[${i}].${key} is ${type}\n${report}")
      endif()
    endforeach()
  endforeach()
  set(report "${report}" PARENT_SCOPE)
endfunction()

# 1. Fault-free reference, then b killed at 0.3 s (4 requests in flight) with a backup on the standby ...
testbed(dropout ok --no-faults)
testbed(dropout backup)
expect_same_outputs(ok backup)
expect_recovered(backup 8 1)
string(JSON rebuilt GET "${report}" faults 0 recomputed_tokens)
if(NOT rebuilt GREATER 0)
  message(FATAL_ERROR "backup run: no positions recomputed, so no request was in flight at the kill\n${report}")
endif()
string(JSON backup_ms GET "${report}" faults 0 recovery_ms)
# ... and without backups: the stage is redeployed (its weights cross the standby's link) before the rebuild.
testbed(dropout redeploy --no-backups)
expect_same_outputs(ok redeploy)
expect_recovered(redeploy 8 1)
string(JSON redeploy_ms GET "${report}" faults 0 recovery_ms)
message(STATUS "recovery: backup ${backup_ms} ms, redeploy ${redeploy_ms} ms")

# 2. The same slot lost twice in a row, and a backup holder lost before it is needed.
testbed(dropout-twice ok40 --no-faults)
testbed(dropout-twice twice)
expect_same_outputs(ok40 twice)
expect_recovered(twice 8 2)
testbed(holder-first holder)
expect_same_outputs(ok40 holder)
expect_recovered(holder 8 2)

# 2b. b drops out and comes back: re-planned on the devices that are up, switched at a safe point (drained).
testbed(rejoin rejoin)
expect_same_outputs(ok40 rejoin)
expect_recovered(rejoin 8 2)
string(JSON kind GET "${report}" faults 1 kind)
if(NOT kind STREQUAL "rejoin")
  message(FATAL_ERROR "rejoin: faults[1].kind is ${kind}\n${report}")
endif()

# 2c. A slowdown fault: the device's worker gets a 3x larger emulated slowdown; same outputs, a slowdown entry.
testbed(slowdown slowdown)
expect_same_outputs(ok slowdown)
file(READ ${work}/slowdown/report.json report)
string(JSON kind GET "${report}" faults 0 kind)
string(JSON device GET "${report}" faults 0 device)
if(NOT kind STREQUAL "slowdown" OR NOT device STREQUAL "c")
  message(FATAL_ERROR "slowdown: faults[0] is ${kind} of ${device}\n${report}")
endif()

# adaptlink-run ARGN must exit 2 with stderr matching `pattern`.
function(expect_exit2 what pattern)
  execute_process(COMMAND ${run} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr TIMEOUT 60)
  if(NOT rc EQUAL 2 OR NOT stderr MATCHES "${pattern}")
    message(FATAL_ERROR "${what}: exit ${rc}\n${stdout}\n${stderr}")
  endif()
endfunction()

# 3. The last copy of the model lost: exit 2 with an error naming the device and the nodes, within seconds.
expect_exit2("last copy lost" "worker 'solo' .* no worker is left to take over nodes \\[0, 7\\]"
             testbed --scenario ${data}/last-copy.toml --model ${fx} --quiet --heartbeat-timeout-s 2)

# 4. serve with a scenario whose devices name no worker endpoint: an error naming the device.
file(WRITE ${work}/requests.jsonl "{\"id\": \"a\", \"input_ids\": [1, 5, 6], \"max_new_tokens\": 3}\n")
expect_exit2("serve without endpoints" "device 'a' holds a stage or backup but has no endpoint"
             serve --scenario ${data}/dropout.toml --model ${fx} --requests ${work}/requests.jsonl)
# A malformed requests file: the file and line are named.
file(WRITE ${work}/bad.jsonl "{\"id\": \"a\", \"input_ids\": [1, 5, 6]}\n{\"id\": \"b\", \"prompt\": 3}\n")
expect_exit2("bad requests file" "bad.jsonl:2: 'prompt' must be a string"
             testbed --scenario ${data}/dropout.toml --model ${fx} --requests ${work}/bad.jsonl)
