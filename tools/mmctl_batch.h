/* mmctl batch: runs a dataset job (a JSONL file of requests, or a directory of images
 * to caption) against the service with N requests in flight, writing crash-safe,
 * resumable results (see the usage text in mmctl_batch.c and README "Batch jobs"). */
#ifndef MM_MMCTL_BATCH_H
#define MM_MMCTL_BATCH_H

#include <stdio.h>

#include "tools/mm_client.h"

/* The usage text of the command (for mmctl's own usage). */
void mmctl_batch_usage(FILE *f);
/* argv[0] is "batch". timeout_s: per request, <= 0 none. Returns the exit code: 0 when
 * every line is ok, 1 when some failed (or results could not be written), 64 for a
 * usage error. */
int mmctl_batch(mm_client *cl, double timeout_s, int argc, char **argv);

#endif
