# adaptlink-run generate end to end on a golden fixture: JSON output with transformers' greedy tokens, the
# --prompt/--image path, --dump-logits, and one-line errors with exit status 2 for bad input.
# Run by CTest with -DBIN=<build dir> -DSRC=<source dir> -DWITH_TORCH=ON|OFF.
if(NOT WITH_TORCH)
  message(STATUS "libtorch back-end not built: skipped")
  return()
endif()
set(run ${BIN}/cli/adaptlink-run)
set(fx ${SRC}/tests/fixtures/llava_llama_mha_tied)
file(READ ${fx}/expected.json expected)

function(expect_generated out what)
  string(JSON n LENGTH "${expected}" generated)
  math(EXPR last "${n} - 1")
  foreach(i RANGE ${last})
    string(JSON want GET "${expected}" generated ${i})
    string(JSON got GET "${out}" generated ${i})
    if(NOT want EQUAL got)
      message(FATAL_ERROR "${what}: generated[${i}] = ${got}, transformers gave ${want}\n${out}")
    endif()
  endforeach()
endfunction()

# 1. --input-ids + --pixel-values, JSON output.
string(JSON n_ids LENGTH "${expected}" input_ids)
math(EXPR last_id "${n_ids} - 1")
set(ids "")
foreach(i RANGE ${last_id})
  string(JSON id GET "${expected}" input_ids ${i})
  list(APPEND ids ${id})
endforeach()
string(REPLACE ";" "," ids "${ids}")
set(logits ${BIN}/exec_generate_logits.safetensors)
execute_process(COMMAND ${run} generate --model ${fx} --input-ids ${ids} --pixel-values ${fx}/reference.safetensors
                        --max-new-tokens 12 --format json --dump-logits ${logits}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "generate failed (${rc}): ${err}")
endif()
expect_generated("${out}" "--input-ids")
string(JSON text GET "${out}" text)
string(JSON prefill_ms GET "${out}" timings prefill_ms)
if(NOT EXISTS ${logits})
  message(FATAL_ERROR "--dump-logits wrote nothing")
endif()
file(REMOVE ${logits})

# 1b. The same through three worker processes over ZeroMQ (--stages 3): transformers' tokens again.
execute_process(COMMAND ${run} generate --model ${fx} --input-ids ${ids} --pixel-values ${fx}/reference.safetensors
                        --max-new-tokens 12 --format json --stages 3 --dump-logits ${logits}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
if(NOT rc EQUAL 0 OR NOT err STREQUAL "")
  message(FATAL_ERROR "generate --stages 3 failed (${rc}): ${err}")
endif()
expect_generated("${out}" "--stages 3")
if(NOT EXISTS ${logits})
  message(FATAL_ERROR "--stages 3 --dump-logits wrote nothing")
endif()
file(REMOVE ${logits})

# 2. --prompt + --image through the tokenizer and the image preprocessing.
execute_process(COMMAND ${run} generate --model ${fx} --prompt "What is shown in this picture?"
                        --image ${SRC}/tests/fixtures/images/test.png --max-new-tokens 12 --format json
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "generate --prompt failed (${rc}): ${err}")
endif()
expect_generated("${out}" "--prompt --image")

# 3. Bad input: one line on stderr, exit status 2.
set(tmp ${BIN}/exec_generate_broken)
file(REMOVE_RECURSE ${tmp})
file(COPY ${SRC}/tests/fixtures/llava_mistral_gqa_full/ DESTINATION ${tmp})
file(WRITE ${tmp}/model.safetensors "not a safetensors file")
foreach(case
    "--model;/nonexistent/dir;--input-ids;1,2"
    "--model;${fx};--input-ids;1,x,3"
    "--model;${fx};--input-ids;1,2;--dtype;fp64"
    "--model;${fx};--input-ids;1,2;--image;/nonexistent.png"
    "--model;${fx};--input-ids;1,400,2;--pixel-values;${fx}/reference.safetensors"
    "--model;${fx};--input-ids;1,400,3"
    "--model;${fx};--input-ids;1,2;--stages;0"
    "--model;${fx};--input-ids;1,2;--stages;100"
    "--model;${fx};--input-ids;1,2;--stages;9"
    "--model;${fx};--input-ids;1,2;--threads;0"
    "--model;${fx};--input-ids;1,2;--threads;1000"
    "--model;${fx};--input-ids;1,2;--threads;-5"
    "--model;${SRC}/tests/fixtures/llava_mistral_gqa_full;--prompt;hi"
    "--model;${tmp};--input-ids;1,2")
  execute_process(COMMAND ${run} generate ${case} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  string(STRIP "${err}" err)
  string(FIND "${err}" "\n" newline)
  if(NOT rc EQUAL 2 OR NOT newline EQUAL -1 OR NOT err MATCHES "^adaptlink-run: error: ")
    message(FATAL_ERROR "generate ${case}: expected one error line and exit 2, got ${rc}: '${err}'")
  endif()
  message(STATUS "ok: ${err}")
endforeach()
file(REMOVE_RECURSE ${tmp})

# 4. The model's context (max_position_embeddings, 256 in the fixture) is enforced before anything runs: too many new
# tokens, or a prompt that alone fills it; the same for a request in a requests file (named by line).
set(long_ids "1")
foreach(i RANGE 1 300)
  string(APPEND long_ids ",5")
endforeach()
foreach(case
    "3 prompt tokens (image tokens included) + 1000000000 new tokens exceed the model's context of 256 (max_position_embeddings): at most 253 new tokens fit|--input-ids|1,5,6|--max-new-tokens|1000000000"
    "the prompt is 301 tokens (image tokens included), the model's context is 256|--input-ids|${long_ids}|--max-new-tokens|2")
  string(REPLACE "|" ";" args "${case}")
  list(POP_FRONT args want)
  execute_process(COMMAND ${run} generate --model ${fx} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                  TIMEOUT 60)
  string(FIND "${err}" "${want}" hit)
  if(NOT rc EQUAL 2 OR hit EQUAL -1)
    message(FATAL_ERROR "generate past the context: expected exit 2 and '${want}', got ${rc}: '${err}'")
  endif()
endforeach()
set(req ${BIN}/exec_generate_context.jsonl)
file(WRITE ${req} "{\"id\": \"ok\", \"input_ids\": [1, 5, 6], \"max_new_tokens\": 3}\n{\"id\": \"big\", \"input_ids\": [${long_ids}], \"max_new_tokens\": 3}\n")
# A request past the context is refused alone (its outputs line is the error, naming the file and line); the others
# run.
execute_process(COMMAND ${run} testbed --scenario ${SRC}/tests/data/testbed/dropout.toml --model ${fx} --requests ${req}
                --no-faults --quiet --out ${BIN}/exec_generate_context
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
file(STRINGS ${BIN}/exec_generate_context/outputs.jsonl lines)
list(LENGTH lines count)
if(count EQUAL 2)
  list(GET lines 0 ok_line)
  list(GET lines 1 big_line)
  string(JSON ok_tokens ERROR_VARIABLE ok_err LENGTH "${ok_line}" generated)
  string(JSON big_error ERROR_VARIABLE big_err GET "${big_line}" error)
endif()
if(NOT rc EQUAL 0 OR NOT count EQUAL 2 OR NOT ok_tokens EQUAL 3 OR NOT big_error MATCHES
   "exec_generate_context.jsonl:2: the prompt is 301 tokens" OR NOT err MATCHES "request 'big' failed")
  message(FATAL_ERROR "requests past the context: expected exit 0, 'ok' with 3 tokens and 'big' refused naming line 2, "
                      "got ${rc}: '${out}' '${err}' ${lines}")
endif()
file(WRITE ${req} "{\"id\": \"q0\", \"input_ids\": [1, 5, 6], \"max_new_tokens\": 3}\n{\"input_ids\": [1, 5], \"max_new_tokens\": 2}\n{\"id\": \"q0\", \"input_ids\": [1, 6], \"max_new_tokens\": 2}\n")
execute_process(COMMAND ${run} testbed --scenario ${SRC}/tests/data/testbed/dropout.toml --model ${fx} --requests ${req}
                --no-faults --quiet --out ${BIN}/exec_generate_context
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
if(NOT rc EQUAL 2 OR NOT err MATCHES "exec_generate_context.jsonl:3: request id 'q0' is used again \\(first at line 1\\)")
  message(FATAL_ERROR "duplicate request ids: expected exit 2 naming line 3, got ${rc}: '${err}'")
endif()
file(REMOVE ${req})

# LLaVA-NeXT in one process: --image goes through the anyres preprocessing, the image's size lays its crops out, and
# the tokens equal transformers' (tests/fixtures/next_llama_mha, the 80x16 image); with --stages it is refused by name.
set(nx ${SRC}/tests/fixtures/next_llama_mha)
file(READ ${nx}/expected.json next_expected)
string(JSON wide_ids GET "${next_expected}" cases 1 input_ids)
string(REGEX REPLACE "[][ \n]" "" wide_ids "${wide_ids}")
execute_process(COMMAND ${run} generate --model ${nx} --input-ids ${wide_ids} --image ${SRC}/tests/fixtures/next_pixels/wide.png
                        --max-new-tokens 10 --format json
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "NeXT generate failed (${rc}): ${err}")
endif()
string(JSON n LENGTH "${next_expected}" cases 1 generated)
math(EXPR last "${n} - 1")
foreach(i RANGE ${last})
  string(JSON want GET "${next_expected}" cases 1 generated ${i})
  string(JSON got GET "${out}" generated ${i})
  if(NOT want EQUAL got)
    message(FATAL_ERROR "NeXT generate: generated[${i}] = ${got}, transformers gave ${want}\n${out}")
  endif()
endforeach()
execute_process(COMMAND ${run} generate --model ${nx} --input-ids ${wide_ids} --image ${SRC}/tests/fixtures/next_pixels/wide.png
                        --stages 2 --max-new-tokens 2
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "llava_next.*not supported here yet")
  message(FATAL_ERROR "NeXT with --stages: exit ${rc} (want 2)\n${err}")
endif()
execute_process(COMMAND ${run} generate --model ${nx} --input-ids ${wide_ids}
                        --pixel-values ${nx}/reference.safetensors --max-new-tokens 2
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "needs --image")
  message(FATAL_ERROR "NeXT with --pixel-values: exit ${rc} (want 2)\n${err}")
endif()
