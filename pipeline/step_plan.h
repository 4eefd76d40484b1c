/* A micro-batch as the stages see it: the scheduler's mm_step packed into the
 * internal.proto StepPlan (per sequence: positions, input rows, block table, output
 * kind, sampling state). Stages read the protobuf directly. */
#ifndef MM_STEP_PLAN_H
#define MM_STEP_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler/scheduler.h"

/* *buf is malloc'd (caller frees). */
mm_status mm_step_plan_pack(const mm_sched *s, const mm_step *step, uint8_t **buf, size_t *len);

#endif
