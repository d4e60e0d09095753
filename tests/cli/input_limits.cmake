# Input files that are not regular files are refused at once, not read: a FIFO would block for ever, /dev/zero would
# fill memory. As a scenario, as a scenario's [model] config, and as a profile: exit 2, one line naming the file.
# And a scenario of more devices than the limit (1024) is refused before anything is built for them; output that
# cannot be written (stdout on /dev/full) fails the command (exit 1) instead of passing silently.
set(out ${BIN}/cli-special-files)
file(REMOVE_RECURSE ${out})
file(MAKE_DIRECTORY ${out})
execute_process(COMMAND mkfifo ${out}/fifo.toml RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mkfifo failed: ${rc}")
endif()
file(WRITE ${out}/config-zero.toml
     "[model]\nconfig = \"/dev/zero\"\n\n[[devices]]\nname = \"agx\"\nkind = \"jetson-agx-orin-64gb\"\n")
set(cases
    "${out}/fifo.toml|validate|${out}/fifo.toml"
    "/dev/zero|validate|/dev/zero"
    "/dev/zero|validate|${out}/config-zero.toml"
    "/dev/zero|plan|${SRC}/scenarios/jetson-quartet.toml|--profile|/dev/zero")
foreach(case IN LISTS cases)
  string(REPLACE "|" ";" args "${case}")
  list(POP_FRONT args named)
  execute_process(COMMAND ${SIM} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE stdout ERROR_VARIABLE stderr TIMEOUT 30)
  if(NOT rc EQUAL 2)
    message(FATAL_ERROR "${args}: exit ${rc}, expected 2\n${stdout}\n${stderr}")
  endif()
  string(STRIP "${stderr}" line)
  if(line MATCHES "\n" OR NOT line MATCHES "not a regular file" OR NOT line MATCHES "${named}")
    message(FATAL_ERROR "${args}: expected one line naming ${named} as not a regular file, got:\n${stderr}")
  endif()
endforeach()
set(many "[model]\npreset = \"llava-1.5-7b\"\n")
foreach(i RANGE 1 1025)
  string(APPEND many "\n[[devices]]\nname = \"d${i}\"\nkind = \"jetson-orin-nano-8gb\"\n")
endforeach()
file(WRITE ${out}/many.toml "${many}")
execute_process(COMMAND ${SIM} validate ${out}/many.toml RESULT_VARIABLE rc ERROR_VARIABLE stderr TIMEOUT 30)
if(NOT rc EQUAL 2 OR NOT stderr MATCHES "many.toml:[0-9]+:[0-9]+: devices: at most 1024 devices in a scenario, got 1025")
  message(FATAL_ERROR "1025 devices: exit ${rc}, expected 2 and the limit named:\n${stderr}")
endif()
if(EXISTS /dev/full)
  foreach(cmd "validate" "plan;--format;json")
    execute_process(COMMAND ${SIM} ${cmd} ${SRC}/scenarios/jetson-quartet.toml OUTPUT_FILE /dev/full
                    RESULT_VARIABLE rc ERROR_VARIABLE stderr TIMEOUT 60)
    if(NOT rc EQUAL 1 OR NOT stderr MATCHES "cannot write to standard output")
      message(FATAL_ERROR "${cmd} > /dev/full: exit ${rc}, expected 1 and a line saying so:\n${stderr}")
    endif()
  endforeach()
  # -o onto a full device: an error naming the file, not exit 0 (probe #17).
  execute_process(COMMAND ${SIM} plan ${SRC}/scenarios/jetson-quartet.toml -o /dev/full RESULT_VARIABLE rc
                  ERROR_VARIABLE stderr TIMEOUT 60)
  if(NOT rc EQUAL 2 OR NOT stderr MATCHES "/dev/full: write failed")
    message(FATAL_ERROR "plan -o /dev/full: exit ${rc}, expected 2 (as compare -o) and the file named:\n${stderr}")
  endif()
else()
  message(STATUS "no /dev/full here: the write-error check is skipped")
endif()
file(REMOVE_RECURSE ${out})
