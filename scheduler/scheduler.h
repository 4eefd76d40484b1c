/* Continuous-batching scheduler of the LLM pipeline: the state of every sequence,
 * admission from a bounded FCFS queue, a per-step token budget with chunked prefill
 * (decodes first, so long prompts never starve them), paged KV blocks with preemption
 * by recomputation, and micro-batch formation with at most max_in_flight micro-batches
 * in the pipeline (a sequence is in at most one). It is pure state: no threads, no
 * I/O, no clocks; the coordinator's scheduler thread is its only caller.
 *
 * Inputs of a sequence are rows: a token id, or -1 for a visual row whose 1152-d
 * vector (an image input, or a generated visual token fed back) is kept beside it.
 *
 * Prefix caching (kv_blocks.h): once every stage holds a full block of a sequence, the
 * block is published under its chained hash; a sequence being admitted takes the
 * published blocks its own leading full blocks hash to and starts its prefill after
 * them. It always computes its last row itself (that row's output is what it needs),
 * so a block holding the last row is never taken from the cache. A row of an input
 * image is hashed by the image's content key; a visual token the model generated has
 * no such key (two generations of "the same" image are not known to be equal), so the
 * block holding it and every later block of the sequence stay private. */
#ifndef MM_SCHEDULER_H
#define MM_SCHEDULER_H

#include <stdint.h>

#include "kernels/backend.h"
#include "kv_blocks.h"

#define MM_SCHED_MAX_EOS 8

typedef struct {
    int32_t max_batch_tokens; /* token budget of one micro-batch */
    int32_t max_batch_seqs;   /* sequences in one micro-batch */
    int32_t max_in_flight;    /* micro-batches in the pipeline at once (P) */
    int32_t max_waiting;      /* bounded admission queue */
    int32_t kv_blocks, kv_block_size;
    int32_t max_context;      /* positions of the model */
    int32_t eos_ids[MM_SCHED_MAX_EOS];
    int n_eos;
    int32_t image_start_id;   /* -1: the model cannot generate images */
    int32_t image_tokens;     /* visual tokens per generated image (64) */
    int32_t visual_dim;       /* 1152 */
    int prefix_cache;         /* publish and reuse full blocks (kv_blocks.h) */
} mm_sched_params;

typedef enum {
    MM_OUT_NONE = 0,   /* mid-prompt prefill chunk */
    MM_OUT_TOKEN = 1,  /* sample the next token */
    MM_OUT_VISUAL = 2, /* produce the next visual token (image mode) */
} mm_out_kind;

typedef enum {
    MM_FINISH_NONE = 0,
    MM_FINISH_STOP,      /* an EOS token */
    MM_FINISH_LENGTH,    /* max_new_tokens or the context */
    MM_FINISH_STOP_STRING,
    MM_FINISH_REMOVED,   /* cancelled, expired or failed: told by the caller */
} mm_finish;

typedef struct mm_seq {
    uint64_t id;
    void *user;                /* the caller's request */
    int32_t *tokens;           /* [n_tokens] prompt then generated; -1 = visual row */
    float *visual;             /* [n_visual, visual_dim] vectors of the -1 rows, in order */
    int32_t n_tokens, cap_tokens, n_visual, cap_visual;
    int32_t n_prompt;
    int32_t n_computed;        /* rows whose K/V the stages hold */
    int32_t max_tokens;        /* n_tokens limit: prompt + max_new_tokens, within the context */
    mm_kv_seq kv;              /* block table */
    mm_sampling sampling;
    uint64_t rng;              /* sampler state, advanced only by sampling outputs */
    int32_t image_left;        /* visual tokens still to generate */
    int32_t n_images;          /* images started so far */
    uint64_t arrival;          /* admission order (lower = older) */
    int in_flight;             /* in a micro-batch now */
    int running;               /* holds blocks / admitted (else waiting) */
    int removed;               /* the caller let go; freed when its micro-batch returns */
    int32_t preemptions;
    mm_finish finish;
    int scheduled_once;        /* has been in a micro-batch */
    /* prefix caching */
    uint8_t (*image_keys)[MM_IMAGE_KEY_BYTES]; /* [n_image_keys] content keys of the prompt's images */
    int32_t n_image_keys;
    mm_block_hash *hashes;     /* [n_hashes] chained hashes of the leading full blocks that may be shared */
    int32_t n_hashes, cap_hashes;
    int32_t hashed_visual;     /* -1 rows inside the hashed blocks */
    int hashes_end;            /* a row that may not be shared was met: no more hashes */
    int32_t n_published;       /* leading blocks of kv published (or taken from the cache) */
    int32_t cached_tokens;     /* prompt rows taken from the cache at the first admission */
} mm_seq;

typedef struct {
    mm_seq *seq;
    int32_t pos, n_rows;       /* rows [pos, pos + n_rows) of seq */
    mm_out_kind output;
    int produced;              /* after mm_sched_step_done: a new row was appended */
} mm_step_entry;

typedef struct mm_step {
    uint64_t id;
    int n;
    mm_step_entry *e;          /* [n] */
    int32_t n_rows;
} mm_step;

/* One result row from the last stage, in the step's entry order (outputs only). */
typedef struct {
    uint64_t seq_id;
    int32_t token;             /* MM_OUT_TOKEN */
    const float *visual;       /* MM_OUT_VISUAL: [visual_dim] */
    uint64_t rng;
} mm_seq_result;

typedef struct mm_sched mm_sched;

mm_status mm_sched_init(const mm_sched_params *p, mm_sched **out);
/* Frees every sequence still held (the caller's user pointers are not touched). */
void mm_sched_free(mm_sched *s);

/* Is there room in the admission queue? (Over: RESOURCE_EXHAUSTED.) */
int mm_sched_can_accept(const mm_sched *s);
/* Queues a new sequence with its prompt rows; visual holds one vector per -1 row.
 * max_new_tokens is clamped to the context and the KV capacity; image_left > 0 starts
 * the sequence in image mode (the prompt ends with <image_start>). image_keys: the
 * content key of each image of the prompt, whose rows are its -1 rows, image_tokens per
 * image in order (n_image_keys * image_tokens -1 rows); NULL: the -1 rows have no key
 * and the blocks from the first of them on are never shared. */
mm_status mm_sched_add(mm_sched *s, uint64_t id, const int32_t *prompt, int32_t n_prompt, const float *visual,
                       const uint8_t (*image_keys)[MM_IMAGE_KEY_BYTES], int32_t n_image_keys, int32_t max_new_tokens,
                       const mm_sampling *sampling, uint64_t seed, int32_t image_left, void *user, mm_seq **out);
/* The caller lets go of seq (finished, cancelled, expired). Its blocks are freed now,
 * or when its micro-batch returns if it is in flight; the pointer is invalid after. */
void mm_sched_remove(mm_sched *s, mm_seq *seq);
/* Stops a sequence for the caller's own reason (stop string): blocks freed, kept
 * until mm_sched_remove. */
void mm_sched_finish(mm_sched *s, mm_seq *seq, mm_finish why);

/* Forms the next micro-batch, or NULL when the pipeline is full or nothing can run.
 * The step stays owned by the scheduler until mm_sched_step_done. */
mm_status mm_sched_next_step(mm_sched *s, mm_step **out);
/* Applies the last stage's results (one per entry with output != NONE, in order):
 * appends tokens/visual rows, marks finished sequences (their blocks freed), frees
 * removed ones (their entries get seq = NULL). The caller reads the entries, then
 * calls mm_sched_step_release. */
mm_status mm_sched_step_done(mm_sched *s, mm_step *step, const mm_seq_result *results, int n_results);
void mm_sched_step_release(mm_sched *s, mm_step *step);
/* The pipeline failed: in-flight steps will never return. Entries' sequences are
 * marked not in flight; removed ones are freed. Steps are released. */
void mm_sched_abort_in_flight(mm_sched *s);

typedef struct {
    int32_t running, waiting, in_flight_steps;
    int32_t kv_blocks_used, kv_blocks_total;
    int32_t kv_blocks_cached;     /* held by nobody, keeping a published prefix (evictable) */
    uint64_t preemptions, steps;
    uint64_t prefix_queries;      /* rows looked up in the prefix cache at admission */
    uint64_t prefix_hits;         /* of those, rows found (not computed) */
    uint64_t prefix_evictions;    /* cached blocks dropped to make room */
} mm_sched_stats;
void mm_sched_get_stats(const mm_sched *s, mm_sched_stats *st);
const mm_sched_params *mm_sched_get_params(const mm_sched *s);
/* Row r's visual vector index among seq's -1 rows (r must be a -1 row). */
int32_t mm_seq_visual_index(const mm_seq *seq, int32_t r);

#endif
