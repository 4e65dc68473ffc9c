/* pipeline_process.h - one pipeline process of facemill-worker (pipeline_process.c):
 * what the parent (worker_main.c) forks, and the memory through which it watches it.
 */
#ifndef FACEMILL_PIPELINE_PROCESS_H
#define FACEMILL_PIPELINE_PROCESS_H

#include "facemill/config.h"

#include <signal.h>
#include <stdatomic.h>

/* What each pipeline process tells its parent, in memory shared across fork: whether
 * it serves, and how many jobs it finished. The parent reads it for READY=1 and its
 * STATUS= line. One slot per process index; a restarted process takes over its
 * predecessor's slot (done keeps counting). */
typedef struct proc_slot {
    atomic_int ready;          /* 1 once the pipeline is open and the broker link runs */
    atomic_uint_least64_t done; /* jobs finished, results sent */
} proc_slot;

/* Runs pipeline process index (the parent's child, after fork) until *stop is set or
 * its link to the broker fails: opens the pipeline (with decode_only, a decoder and no
 * models), connects to the sink and the broker, then takes, runs and reports batches
 * of jobs. On stopping it hands back what it holds and says goodbye to the broker.
 * Sets slot->ready once it serves and adds every finished batch to slot->done (slot is
 * the parent's shared memory). Logs its own failures. Returns the process's exit
 * status: 0 after *stop, 1 when it could not start or its link failed. */
int pipeline_process_run(const fm_config *cfg, int index, int decode_only, proc_slot *slot,
                         volatile sig_atomic_t *stop);

#endif
