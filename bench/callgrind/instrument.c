/* Callgrind's client requests for bench/callgrind/scenario.py, which loads this through ctypes: run.py starts
 * valgrind with --instr-atstart=no, so that the interpreter's start-up and the imports run uninstrumented (about
 * ten times faster), and the scenario turns instrumentation on just before its measured phases and off after
 * them. Outside valgrind both are a few no-op instructions. */
#include <valgrind/callgrind.h>

void start_instrumentation(void) { CALLGRIND_START_INSTRUMENTATION; }

void stop_instrumentation(void) { CALLGRIND_STOP_INSTRUMENTATION; }
