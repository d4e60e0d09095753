# adaptlink-run profile end to end on a tiny fixture: a testbed profile for a scenario on the fixture's own config
# (one entry per device), which adaptlink-sim plan --profile accepts; --device; the request_shape check; bad
# input exits 2 with one line. Run by CTest with -DSIM=<adaptlink-sim> -DBIN=<build dir> -DSRC=<source dir>.
if(NOT WITH_TORCH)
  message(STATUS "libtorch back-end not built: skipped")
  return()
endif()
set(run ${BIN}/cli/adaptlink-run)
set(fx ${SRC}/tests/fixtures/llava_llama_mha_tied)
set(dir ${BIN}/exec_profile)
file(REMOVE_RECURSE ${dir})
file(MAKE_DIRECTORY ${dir})
set(scenario ${dir}/trio.toml)
file(WRITE ${scenario} "name = \"fixture-trio\"
[model]
config = \"${fx}/config.json\"
dtype = \"fp32\"
[[devices]]
name = \"fast\"
tflops = 9
mem_gb = 1
mem_bw_gbs = 100
[[devices]]
name = \"slow\"
tflops = 3
mem_gb = 1
mem_bw_gbs = 100
[[devices]]
name = \"mid\"
tflops = 4.5
mem_gb = 1
mem_bw_gbs = 100
[workload]
images_per_request = 1
prompt_tokens = 16
output_tokens = 24
[planner]
name = \"adaptlink\"
backups = false
")

function(run_ok what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
  set(err "${err}" PARENT_SCOPE)
endfunction()

function(run_bad what expect)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "${what}: exit status ${rc}, expected 2\n${out}\n${err}")
  endif()
  string(FIND "${err}" "${expect}" at)
  if(at LESS 0)
    message(FATAL_ERROR "${what}: stderr lacks '${expect}':\n${err}")
  endif()
  string(STRIP "${err}" stripped)
  string(FIND "${stripped}" "\n" newline)
  if(NOT newline EQUAL -1)
    message(FATAL_ERROR "${what}: the error is not one line:\n${err}")
  endif()
endfunction()

# 1. A testbed profile: one entry per scenario device, progress per node on stderr.
set(prof ${dir}/testbed.json)
run_ok("profile --scenario" ${run} profile --model ${fx} --scenario ${scenario} --out ${prof} --repeats 1 --threads 1)
file(READ ${prof} json)
string(JSON n LENGTH "${json}" profiles)
if(NOT n EQUAL 3)
  message(FATAL_ERROR "expected 3 profile entries, got ${n}:\n${json}")
endif()
string(JSON dev GET "${json}" profiles 1 device)
string(JSON nodes LENGTH "${json}" profiles 1 nodes)
if(NOT dev STREQUAL "slow" OR NOT nodes EQUAL 8)
  message(FATAL_ERROR "profiles[1]: device '${dev}' with ${nodes} nodes, expected 'slow' with 8")
endif()
string(JSON prompt GET "${json}" request_shape prompt_tokens)
if(NOT prompt EQUAL 16)
  message(FATAL_ERROR "request_shape.prompt_tokens ${prompt}, expected the scenario's 16")
endif()
foreach(line "[1/8] vision.embed" "[8/8] head")
  string(FIND "${err}" "profile: ${line}" at)
  if(at LESS 0)
    message(FATAL_ERROR "no progress line 'profile: ${line}' on stderr:\n${err}")
  endif()
endforeach()
string(FIND "${out}" "wrote ${prof}" at)
if(at LESS 0)
  message(FATAL_ERROR "the summary does not say where the profile went:\n${out}")
endif()

# 2. The planner takes it: measured times instead of the roofline change the prediction.
run_ok("plan without profile" ${SIM} plan ${scenario} --format json)
set(roofline "${out}")
run_ok("plan --profile" ${SIM} plan ${scenario} --profile ${prof} --format json)
string(JSON measured_rps GET "${out}" predicted throughput_rps)
string(JSON roofline_rps GET "${roofline}" predicted throughput_rps)
if(measured_rps STREQUAL roofline_rps)
  message(FATAL_ERROR "plan --profile predicts the roofline's ${roofline_rps} requests/s")
endif()

# 3. --device: one entry, unscaled, on stdout as JSON.
run_ok("profile --device" ${run} profile --model ${fx} --device here --repeats 1 --prompt-tokens 8 --format json)
string(JSON dev GET "${out}" device)
string(JSON nodes LENGTH "${out}" nodes)
if(NOT dev STREQUAL "here" OR NOT nodes EQUAL 8)
  message(FATAL_ERROR "--device: device '${dev}' with ${nodes} nodes:\n${out}")
endif()

# 4. A profile measured for another request shape is refused by the planner, naming the problem.
set(other ${dir}/other-shape.json)
run_ok("profile --prompt-tokens 5" ${run} profile --model ${fx} --scenario ${scenario} --prompt-tokens 5 --repeats 1
       --out ${other})
run_bad("plan with another shape's profile" "request_shape: the times were measured for 1 image(s) and 5 prompt tokens"
        ${SIM} plan ${scenario} --profile ${other})

# 5. Bad input: one line, exit status 2.
run_bad("neither --scenario nor --device" "adaptlink-run: error: profile needs --scenario FILE"
        ${run} profile --model ${fx})
run_bad("missing checkpoint" "adaptlink-run: error:" ${run} profile --model ${dir}/nowhere --device x)
run_bad("unknown device" "--device toaster: no such device in scenario 'fixture-trio'"
        ${run} profile --model ${fx} --scenario ${scenario} --device toaster)
run_bad("zero repeats" "adaptlink-run:" ${run} profile --model ${fx} --device x --repeats 0)
