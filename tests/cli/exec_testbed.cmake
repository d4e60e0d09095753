# adaptlink-run testbed end to end on a tiny fixture: worker processes over ZeroMQ, a worker killed with
# SIGKILL while 4 requests are in flight. Every request completes with the tokens of the fault-free run, with a
# backup (switch-over) and without one (redeploy); faults[] is filled; a device lost twice, a backup holder lost
# first, a rejoin, a slowdown, a worker stopped with SIGSTOP (found by the heartbeat timeout; also continued by a
# rejoin), a link fault, and the last copy lost (a clear error, no hang); no worker process is left behind.
# Run by CTest with -DBIN=<build dir> -DSRC=<source dir>.
if(NOT WITH_TORCH)
  message(STATUS "libtorch back-end not built: skipped")
  return()
endif()
set(run ${BIN}/cli/adaptlink-run)
set(fx ${SRC}/tests/fixtures/llava_llama_mha_tied)
set(data ${SRC}/tests/data/testbed)
set(work ${BIN}/tests/exec_testbed)
file(REMOVE_RECURSE ${work})
# Every testbed run gets this in its environment, and so do its workers: a process that still has it after the
# run is a worker left behind.
string(RANDOM LENGTH 12 mark)
set(mark "ADAPTLINK_TESTBED_TEST=${mark}")

function(testbed scenario out)
  set(heartbeat --heartbeat-timeout-s 2)
  list(FIND ARGN --heartbeat-timeout-s given)
  if(given GREATER -1)
    set(heartbeat "")
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -E env ${mark} ${run} testbed --scenario ${data}/${scenario}.toml
                          --model ${fx} --quiet ${heartbeat} --out ${work}/${out} ${ARGN}
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

# out's faults[index] is a `kind` fault of `device` (report.json goes to `report` in the caller's scope).
function(expect_fault out index kind device)
  file(READ ${work}/${out}/report.json report)
  string(JSON k GET "${report}" faults ${index} kind)
  string(JSON d GET "${report}" faults ${index} device)
  if(NOT k STREQUAL kind OR NOT d STREQUAL device)
    message(FATAL_ERROR "${out}: faults[${index}] is ${k} of ${d}, want ${kind} of ${device}\n${report}")
  endif()
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
expect_fault(rejoin 1 rejoin b)

# 2c. A slowdown fault: the device's worker gets a 3x larger emulated slowdown; same outputs, a slowdown entry.
testbed(slowdown slowdown)
expect_same_outputs(ok slowdown)
expect_fault(slowdown 0 slowdown c)

# 2d. b hangs (SIGSTOP) instead of exiting: found lost by the heartbeat timeout (1.5 s here; a kill is seen
# within milliseconds), its backup takes over, the same outputs. It is still stopped when the run ends, and must
# not be left behind.
function(expect_no_workers_left what)
  execute_process(COMMAND sh -c "grep -l -s -a '${mark}' /proc/[0-9]*/environ" OUTPUT_VARIABLE left)
  if(NOT left STREQUAL "")
    message(FATAL_ERROR "${what}: worker processes left behind:\n${left}")
  endif()
endfunction()
# A JSON number of seconds (0.3154) as whole milliseconds (315).
function(to_ms seconds var)
  if(NOT seconds MATCHES "^([0-9]+)(\\.([0-9]*))?$")
    message(FATAL_ERROR "not a plain number of seconds: ${seconds}")
  endif()
  string(SUBSTRING "${CMAKE_MATCH_3}000" 0 3 fraction)
  math(EXPR ms "${CMAKE_MATCH_1} * 1000 + 1${fraction} - 1000")  # 1xyz - 1000: no octal reading of 0xy
  set(${var} ${ms} PARENT_SCOPE)
endfunction()
# The latest start (ms) among out/trace.json's events whose "ts" (us) follows `prefix`.
function(last_event_ms out prefix var)
  file(READ ${work}/${out}/trace.json trace)
  string(REGEX MATCHALL "${prefix}\"ts\":[0-9]+" starts "${trace}")
  set(last 0)
  foreach(e IN LISTS starts)
    string(REGEX REPLACE ".*:" "" us "${e}")
    math(EXPR ms "${us} / 1000")
    if(ms GREATER last)
      set(last ${ms})
    endif()
  endforeach()
  set(${var} ${last} PARENT_SCOPE)
endfunction()

testbed(stop stop --heartbeat-timeout-s 1.5)
expect_same_outputs(ok stop)
expect_recovered(stop 8 1)
expect_no_workers_left(stop)
string(JSON at GET "${report}" faults 0 at_s)
string(JSON detected GET "${report}" faults 0 detected_s)
to_ms(${at} at_ms)
to_ms(${detected} detected_ms)
math(EXPR detection_ms "${detected_ms} - ${at_ms}")
message(STATUS "stop: detected ${detection_ms} ms after the SIGSTOP (heartbeat timeout 1500 ms, pings every 250 ms)")
if(detection_ms LESS 1000 OR detection_ms GREATER 4000)
  message(FATAL_ERROR "stop: detected ${detection_ms} ms after the SIGSTOP, not about the heartbeat timeout\n${report}")
endif()

# 2e. A stop, then a rejoin (SIGCONT at 2.3 s, after the detection): b goes on with the state it had, which its
# hello drops; the coordinator re-plans, switches at the safe point and b runs stages again (trace events after
# the switch). 12 requests: some still wait for admission at the safe point.
testbed(stop-rejoin ok12 --no-faults)
testbed(stop-rejoin stoprejoin --heartbeat-timeout-s 1.5)
expect_same_outputs(ok12 stoprejoin)
expect_recovered(stoprejoin 12 2)
expect_no_workers_left(stop-rejoin)
expect_fault(stoprejoin 1 rejoin b)
string(JSON switched GET "${report}" faults 1 recovered_s)
to_ms(${switched} switched_ms)
# Stage events of b (devices a, b, c, spare: thread 2); keys are sorted, so "tid" comes just before "ts".
last_event_ms(stoprejoin "\"tid\":2," b_last_ms)
if(NOT b_last_ms GREATER switched_ms)
  message(FATAL_ERROR "stop-rejoin: b's last stage event at ${b_last_ms} ms, the switch at ${switched_ms} ms")
endif()

# 2f. A link fault: from 0.1 s on, every link with b at an end runs at 0.2 Mbit/s (a -> b and b -> c). Same
# outputs, a link entry. That it took effect, as a lower bound that load cannot break: a request's steps follow each
# other at least 18 ms apart (three routes of two 3 ms hops), so at most 4 x (at/18 ms + 1) decode steps crossed
# a -> b before the fault reached a; the other ones of the 8 x 23 cross it after, each at least 288 bytes (the
# header and a [1, 1, 64] float activation), 11.52 ms each at 0.2 Mbit/s, one after the other; b runs each one
# after it crossed. The fault-free run ends in about 1.1 s; this bound is about 1.9 s.
testbed(link link)
expect_same_outputs(ok link)
expect_fault(link 0 link b)
string(JSON detected TYPE "${report}" faults 0 detected_s)
if(NOT detected STREQUAL "NULL")
  message(FATAL_ERROR "link: faults[0].detected_s is ${detected}\n${report}")
endif()
string(JSON at GET "${report}" faults 0 at_s)
to_ms(${at} at_ms)
math(EXPR bound_ms "${at_ms} + (8 * 23 - 4 * (${at_ms} / 18 + 1)) * 288 * 8 / 200")
last_event_ms(link "" last_ms)
message(STATUS "link: last stage event at ${last_ms} ms (at least ${bound_ms} ms with the slow link)")
if(last_ms LESS bound_ms)
  message(FATAL_ERROR "link: the run ended at ${last_ms} ms, the slow link needs at least ${bound_ms} ms")
endif()

# 2g. A replicated plan: two equal devices that each hold the model, in_flight 2, no backups, no faults: adaptlink
# plans two solo replicas (in_flight 1 each). Both are served at once; every request completes with the tokens of
# the same requests served by one pipeline ([planner] replicas = false), plan.json lists the replicas, the trace
# holds both devices' stage events. (No timing is asserted: on a 2-core machine the workers share the cores.)
set(replicated_toml [=[
name = "testbed-replicas"

[model]
preset = "llava-1.5-7b"
dtype = "fp32"

[[devices]]
name = "a"
kind = "jetson-orin-nx-16gb"

[[devices]]
name = "b"
kind = "jetson-orin-nx-16gb"

[network]
topology = "star"
bandwidth_mbps = 400
latency_ms = 3.0

[workload]
requests = 12
arrival = "closed"
in_flight = 2
images_per_request = 1
prompt_tokens = 16
output_tokens = 24

[planner]
name = "adaptlink"
objective = "throughput"
backups = false
]=])
file(WRITE ${work}/replicas.toml "${replicated_toml}")
string(REPLACE "backups = false" "backups = false\nreplicas = false" one_pipeline_toml "${replicated_toml}")
file(WRITE ${work}/one-pipeline.toml "${one_pipeline_toml}")
function(testbed_at toml out)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env ${mark} ${run} testbed --scenario ${toml} --model ${fx} --quiet
                          --threads 1 --out ${work}/${out} ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr TIMEOUT 120)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "testbed ${toml} ${ARGN}: exit ${rc}\n${stdout}\n${stderr}")
  endif()
  message(STATUS "testbed ${toml} ${ARGN}:\n${stdout}")
  set(stdout "${stdout}" PARENT_SCOPE)
endfunction()
testbed_at(${work}/one-pipeline.toml one-pipeline)
file(READ ${work}/one-pipeline/plan.json plan)
string(JSON n ERROR_VARIABLE none LENGTH "${plan}" replicas)
if(NOT none AND n GREATER 0)
  message(FATAL_ERROR "one-pipeline: replicas = false, yet plan.json lists ${n} replicas\n${plan}")
endif()
testbed_at(${work}/replicas.toml replicated)
if(NOT stdout MATCHES "2 replicas: 1\\+1 stages")
  message(FATAL_ERROR "replicated: the summary does not name 2 solo replicas\n${stdout}")
endif()
file(READ ${work}/replicated/plan.json plan)
string(JSON n LENGTH "${plan}" replicas)
if(NOT n EQUAL 2)
  message(FATAL_ERROR "replicated: plan.json lists ${n} replicas, want 2\n${plan}")
endif()
foreach(r 0 1)
  string(JSON k GET "${plan}" replicas ${r} in_flight)
  if(NOT k EQUAL 1)
    message(FATAL_ERROR "replicated: replica ${r} has in_flight ${k}, want 1\n${plan}")
  endif()
endforeach()
expect_same_outputs(one-pipeline replicated)
file(READ ${work}/replicated/report.json report)
string(JSON done GET "${report}" requests_completed)
string(JSON lost GET "${report}" requests_lost)
string(JSON rps GET "${report}" throughput_rps)
string(JSON n LENGTH "${report}" faults)
if(NOT done EQUAL 12 OR NOT lost EQUAL 0 OR NOT n EQUAL 0 OR NOT rps GREATER 0)
  message(FATAL_ERROR "replicated: ${done} completed, ${lost} lost, ${n} faults, ${rps} req/s\n${report}")
endif()
foreach(device a b)
  string(JSON u GET "${report}" device_utilization ${device})
  if(NOT u GREATER 0)
    message(FATAL_ERROR "replicated: device ${device} utilisation ${u}, both replicas should have run\n${report}")
  endif()
endforeach()
file(READ ${work}/replicated/trace.json trace)
foreach(tid 1 2)  # devices a and b; keys are sorted, so "tid" comes just before "ts"
  if(NOT trace MATCHES "\"tid\":${tid},\"ts\"")
    message(FATAL_ERROR "replicated: no stage event of device ${tid} in trace.json")
  endif()
endforeach()
file(READ ${work}/one-pipeline/report.json one_report)
string(JSON one_rps GET "${one_report}" throughput_rps)
message(STATUS "replicated ${rps} req/s, one pipeline ${one_rps} req/s")
expect_no_workers_left(replicas)

# adaptlink-run ARGN must exit with `code` (1: the run failed, 2: bad input) and stderr matching `pattern`.
function(expect_exit code what pattern)
  execute_process(COMMAND ${run} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr TIMEOUT 60)
  if(NOT rc EQUAL code OR NOT stderr MATCHES "${pattern}")
    message(FATAL_ERROR "${what}: exit ${rc} (want ${code})\n${stdout}\n${stderr}")
  endif()
endfunction()
function(expect_exit2 what pattern)
  expect_exit(2 "${what}" "${pattern}" ${ARGN})
endfunction()

# 3. The last copy of the model lost: the run failed (exit 1) with an error naming the device and the nodes, within
# seconds.
# Its --out held an earlier run's files: they are replaced by this run's (a failed run leaves nothing of the earlier
# one looking current): outputs.jsonl holds what ended, report.json says "failed", why, and what completed; the
# earlier trace.json is gone; a file not the run's own stays.
file(MAKE_DIRECTORY ${work}/lost)
file(WRITE ${work}/lost/outputs.jsonl "{\"id\": \"stale\"}\n")
file(WRITE ${work}/lost/report.json "{}\n")
file(WRITE ${work}/lost/trace.json "{}\n")
file(WRITE ${work}/lost/notes.txt "mine\n")
expect_exit(1 "last copy lost" "worker 'solo' .* cannot be replaced: device 'solo' held stage 0 \\(nodes 0\\.\\.7\\) and no surviving device"
            testbed --scenario ${data}/last-copy.toml --model ${fx} --quiet --heartbeat-timeout-s 2 --out ${work}/lost)
file(READ ${work}/lost/outputs.jsonl lost_outputs)
file(READ ${work}/lost/report.json lost_report)
string(JSON lost_status GET "${lost_report}" status)
string(JSON lost_error GET "${lost_report}" error)
string(JSON lost_completed LENGTH "${lost_report}" completed)
string(JSON lost_done GET "${lost_report}" requests_completed)
if(lost_outputs MATCHES "stale" OR EXISTS ${work}/lost/trace.json OR NOT EXISTS ${work}/lost/notes.txt OR
   NOT lost_status STREQUAL "failed" OR NOT lost_error MATCHES "cannot be replaced" OR
   NOT lost_completed EQUAL lost_done)
  message(FATAL_ERROR "a failed run: --out must hold this run's outputs and a failed report, and keep notes.txt:\n"
                      "${lost_outputs}\n${lost_report}")
endif()

# 4. serve with a scenario whose devices name no worker endpoint: an error naming the device.
file(WRITE ${work}/requests.jsonl "{\"id\": \"a\", \"input_ids\": [1, 5, 6], \"max_new_tokens\": 3}\n")
expect_exit2("serve without endpoints" "device 'a' holds a stage or backup but has no endpoint"
             serve --insecure --scenario ${data}/dropout.toml --model ${fx} --requests ${work}/requests.jsonl)
# A malformed requests file (a line that is not a JSON object): the file and line are named.
file(WRITE ${work}/bad.jsonl "{\"id\": \"a\", \"input_ids\": [1, 5, 6]}\n{\"id\": \"b\", \"prompt\": 3\n")
expect_exit2("bad requests file" "bad.jsonl:2: not a JSON object"
             testbed --scenario ${data}/dropout.toml --model ${fx} --requests ${work}/bad.jsonl)
