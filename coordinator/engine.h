/* The coordinator's scheduler thread: the one owner of request state. One loop over
 * the inproc request socket, the pipeline (MPI results) and the clock; each turn it
 * admits requests (bounded queue; requests with images first have them encoded, then
 * enter the scheduler), forms micro-batches and sends their step plans,
 * collects results, streams text back (detokenizing, watching stop strings), and
 * expires deadlines and cancellations, freeing KV blocks. It must run on the thread
 * that initialised MPI (FUNNELED). */
#ifndef MM_COORD_ENGINE_H
#define MM_COORD_ENGINE_H

#include <signal.h>
#include <stdatomic.h>

#include "decoder_pool.h"
#include "encoder_pool.h"
#include "metrics.h"
#include "trace.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "mpi_driver.h"
#include "pipeline/serve_config.h"

typedef struct {
    const mm_serve_config *cfg;
    const mm_tokenizer *tok;
    const mm_llama_config *llm;
    mm_mpi_driver *drv;
    void *zmq_ctx;
    atomic_int *serving;
    volatile sig_atomic_t *stop_flag;     /* SIGINT / SIGTERM */
    volatile sig_atomic_t *stage_failed;  /* SIGUSR1: hydra says a process of the job died */
    int32_t image_start_id;
    int32_t image_tokens;                 /* visual tokens per image (num_image_tokens) */
    mm_encoder_pool *encoder;             /* image parts -> visual tokens; NULL: no vision input */
    mm_decoder_pool *decoder;             /* generated visual tokens -> PNG; NULL: tokens only */
    mm_metrics *metrics;                  /* operator metrics; NULL: none */
    mm_trace *trace;                      /* the scheduler's timeline (trace_file); NULL: none */
} mm_engine_params;

typedef struct mm_engine mm_engine;

/* Binds the inproc endpoints (before the gRPC threads connect). */
mm_status mm_engine_init(const mm_engine_params *p, mm_engine **out);
/* Runs until a stop is asked (returns 0 after a clean pipeline stop) or the pipeline
 * has failed and fail_exit_ms has passed (returns 1). */
int mm_engine_run(mm_engine *e);
/* Tells the reply threads to end: gRPC's, and the HTTP door's when it runs (call before
 * mm_grpc_stop / mm_http_stop). */
void mm_engine_stop_replies(mm_engine *e, int http_door);
void mm_engine_free(mm_engine *e);
/* Tokens a sequence may hold: the model context and the KV cache. */
int32_t mm_engine_max_context(const mm_serve_config *cfg, const mm_llama_config *llm);

#endif
