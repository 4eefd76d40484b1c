/* See scheduler.h. Lists are small arrays kept in admission order (oldest first), so
 * "oldest" and "youngest" are the two ends: the oldest sequence always makes progress
 * (it is never the preemption victim of a younger one), which is what rules out
 * deadlock and livelock when KV blocks run out. */
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

struct mm_sched {
    mm_sched_params p;
    mm_kv_blocks blocks;
    mm_seq **running;   /* [n_running] admitted, holding blocks, by arrival */
    mm_seq **waiting;   /* [n_waiting] by arrival (preempted ones come back at their place) */
    int32_t n_running, n_waiting, cap_seqs;
    mm_step **in_flight; /* [max_in_flight] */
    int32_t n_in_flight;
    uint64_t next_arrival, next_step_id, preemptions, steps;
};

/* ---------------------------------------------------------------- lists */

static mm_status list_reserve(mm_sched *s, int32_t n) {
    if (n <= s->cap_seqs) return MM_OK;
    int32_t cap = s->cap_seqs ? s->cap_seqs * 2 : 64;
    while (cap < n) cap *= 2;
    mm_seq **r = realloc(s->running, (size_t)cap * sizeof *r);
    CHECK(CHECK_ALLOC(r));
    s->running = r;
    mm_seq **w = realloc(s->waiting, (size_t)cap * sizeof *w);
    CHECK(CHECK_ALLOC(w));
    s->waiting = w;
    s->cap_seqs = cap;
    return MM_OK;
}

/* Inserts seq by arrival into list[*n] (capacity reserved by the caller). */
static void list_insert(mm_seq **list, int32_t *n, mm_seq *seq) {
    int32_t i = *n;
    while (i > 0 && list[i - 1]->arrival > seq->arrival) {
        list[i] = list[i - 1];
        i--;
    }
    list[i] = seq;
    (*n)++;
}

static int list_remove(mm_seq **list, int32_t *n, const mm_seq *seq) {
    for (int32_t i = 0; i < *n; i++)
        if (list[i] == seq) {
            memmove(&list[i], &list[i + 1], (size_t)(*n - i - 1) * sizeof *list);
            (*n)--;
            return 1;
        }
    return 0;
}

/* ---------------------------------------------------------------- sequences */

static mm_status seq_push_row(mm_seq *seq, int32_t token, const float *vec, int32_t visual_dim) {
    if (seq->n_tokens == seq->cap_tokens) {
        int32_t cap = seq->cap_tokens ? seq->cap_tokens * 2 : 64;
        int32_t *t = realloc(seq->tokens, (size_t)cap * sizeof *t);
        CHECK(CHECK_ALLOC(t));
        seq->tokens = t, seq->cap_tokens = cap;
    }
    if (token < 0) {
        if (visual_dim <= 0) return MM_ERROR(MM_ERR_INVALID, "visual row but the model has no visual dimension");
        if (seq->n_visual == seq->cap_visual) {
            int32_t cap = seq->cap_visual ? seq->cap_visual * 2 : 64;
            float *v = realloc(seq->visual, (size_t)cap * (size_t)visual_dim * sizeof *v);
            CHECK(CHECK_ALLOC(v));
            seq->visual = v, seq->cap_visual = cap;
        }
        memcpy(seq->visual + (size_t)seq->n_visual * (size_t)visual_dim, vec, (size_t)visual_dim * sizeof *vec);
        seq->n_visual++;
        token = -1;
    }
    seq->tokens[seq->n_tokens++] = token;
    return MM_OK;
}

static void seq_free(mm_seq *seq) {
    free(seq->tokens);
    free(seq->visual);
    free(seq);
}

int32_t mm_seq_visual_index(const mm_seq *seq, int32_t r) {
    int32_t k = 0;
    for (int32_t i = 0; i < r; i++) k += seq->tokens[i] < 0;
    return k;
}

/* Drops seq's blocks and its computed state; it goes back to the waiting queue and
 * will recompute everything it has (prompt and generated rows) when readmitted. */
static void preempt(mm_sched *s, mm_seq *seq) {
    mm_kv_blocks_release(&s->blocks, &seq->kv);
    seq->n_computed = 0;
    seq->running = 0;
    list_remove(s->running, &s->n_running, seq);
    list_insert(s->waiting, &s->n_waiting, seq);
    seq->preemptions++;
    s->preemptions++;
}

/* Stops seq for good: no more scheduling, blocks back to the pool. */
static void retire(mm_sched *s, mm_seq *seq, mm_finish why) {
    if (seq->finish == MM_FINISH_NONE) seq->finish = why;
    if (!list_remove(s->running, &s->n_running, seq)) list_remove(s->waiting, &s->n_waiting, seq);
    seq->running = 0;
    if (!seq->in_flight) mm_kv_blocks_release(&s->blocks, &seq->kv);
}

/* ---------------------------------------------------------------- API */

mm_status mm_sched_init(const mm_sched_params *p, mm_sched **out) {
    if (p->max_batch_tokens < 1 || p->max_batch_seqs < 1 || p->max_in_flight < 1 || p->max_waiting < 1 ||
        p->max_context < 2 || p->n_eos < 0 || p->n_eos > MM_SCHED_MAX_EOS)
        return MM_ERROR(MM_ERR_INVALID, "scheduler: bad parameters");
    mm_sched *s = calloc(1, sizeof *s);
    CHECK(CHECK_ALLOC(s));
    s->p = *p;
    mm_status st = mm_kv_blocks_init(p->kv_blocks, p->kv_block_size, &s->blocks);
    if (st == MM_OK) {
        s->in_flight = calloc((size_t)p->max_in_flight, sizeof *s->in_flight);
        st = CHECK_ALLOC(s->in_flight);
    }
    if (st == MM_OK) st = list_reserve(s, 64);
    if (st != MM_OK) {
        mm_sched_free(s);
        return st;
    }
    *out = s;
    return MM_OK;
}

void mm_sched_free(mm_sched *s) {
    if (!s) return;
    mm_sched_abort_in_flight(s);
    for (int32_t i = 0; i < s->n_running; i++) {
        mm_kv_blocks_release(&s->blocks, &s->running[i]->kv);
        seq_free(s->running[i]);
    }
    for (int32_t i = 0; i < s->n_waiting; i++) seq_free(s->waiting[i]);
    free(s->running);
    free(s->waiting);
    free(s->in_flight);
    if (s->blocks.pool) mm_kv_blocks_free(&s->blocks);
    free(s);
}

int mm_sched_can_accept(const mm_sched *s) { return s->n_waiting < s->p.max_waiting; }

const mm_sched_params *mm_sched_get_params(const mm_sched *s) { return &s->p; }

mm_status mm_sched_add(mm_sched *s, uint64_t id, const int32_t *prompt, int32_t n_prompt, const float *visual,
                       int32_t max_new_tokens, const mm_sampling *sampling, uint64_t seed, int32_t image_left,
                       void *user, mm_seq **out) {
    int32_t capacity = s->p.kv_blocks * s->p.kv_block_size;
    int32_t limit = s->p.max_context < capacity ? s->p.max_context : capacity;
    if (n_prompt < 1) return MM_ERROR(MM_ERR_INVALID, "empty prompt");
    if (n_prompt >= limit)
        return MM_ERROR(MM_ERR_INVALID, "the prompt has %d tokens, the context is %d", n_prompt, limit);
    if (max_new_tokens < 1) return MM_ERROR(MM_ERR_INVALID, "max_new_tokens must be >= 1");
    if (image_left > 0 && s->p.image_start_id < 0)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "this model cannot generate images");
    CHECK(list_reserve(s, s->n_running + s->n_waiting + 1));
    mm_seq *seq = calloc(1, sizeof *seq);
    CHECK(CHECK_ALLOC(seq));
    seq->id = id, seq->user = user;
    seq->sampling = *sampling;
    seq->rng = mm_rng_seed(seed);
    seq->image_left = image_left;
    seq->n_images = image_left > 0;
    int32_t v = 0;
    for (int32_t i = 0; i < n_prompt; i++) {
        mm_status st = seq_push_row(seq, prompt[i], prompt[i] < 0 ? visual + (size_t)(v++) * (size_t)s->p.visual_dim : NULL,
                                    s->p.visual_dim);
        if (st != MM_OK) {
            seq_free(seq);
            return st;
        }
    }
    seq->n_prompt = n_prompt;
    int64_t max_tokens = (int64_t)n_prompt + max_new_tokens;
    seq->max_tokens = max_tokens < limit ? (int32_t)max_tokens : limit;
    seq->arrival = s->next_arrival++;
    list_insert(s->waiting, &s->n_waiting, seq);
    *out = seq;
    return MM_OK;
}

void mm_sched_finish(mm_sched *s, mm_seq *seq, mm_finish why) { retire(s, seq, why); }

void mm_sched_remove(mm_sched *s, mm_seq *seq) {
    retire(s, seq, MM_FINISH_REMOVED);
    if (seq->in_flight) {
        seq->removed = 1; /* blocks and memory go when its micro-batch returns */
        return;
    }
    seq_free(seq);
}

/* Makes room for seq to hold n_tokens. Preempts younger sequences that are not in the
 * pipeline (youngest first). 1: seq may run; 0: it must wait (blocks held by sequences
 * in flight will come back). */
static mm_status make_room(mm_sched *s, mm_seq *seq, int32_t n_tokens, int n_chosen, int *ok) {
    for (;;) {
        CHECK(mm_kv_blocks_grow(&s->blocks, &seq->kv, n_tokens, ok));
        if (*ok) return MM_OK;
        mm_seq *victim = NULL;
        for (int32_t i = s->n_running - 1; i >= 0; i--) {
            mm_seq *c = s->running[i];
            if (c->arrival <= seq->arrival) break;
            if (!c->in_flight) {
                victim = c;
                break;
            }
        }
        if (victim) {
            preempt(s, victim);
            continue;
        }
        /* Nothing younger to take from. If others hold blocks in the pipeline, wait for
         * them; otherwise seq itself steps back so that the older ones can go on. */
        if (s->n_in_flight == 0 && n_chosen == 0) preempt(s, seq);
        return MM_OK;
    }
}

static void add_entry(mm_step *st, mm_seq *seq, int32_t n_rows) {
    mm_step_entry *e = &st->e[st->n++];
    e->seq = seq;
    e->pos = seq->n_computed;
    e->n_rows = n_rows;
    e->produced = 0;
    e->output = MM_OUT_NONE;
    if (seq->n_computed + n_rows == seq->n_tokens) e->output = seq->image_left > 0 ? MM_OUT_VISUAL : MM_OUT_TOKEN;
    st->n_rows += n_rows;
    seq->in_flight = 1;
    seq->scheduled_once = 1;
}

mm_status mm_sched_next_step(mm_sched *s, mm_step **out) {
    *out = NULL;
    if (s->n_in_flight >= s->p.max_in_flight) return MM_OK;
    mm_step *st = calloc(1, sizeof *st);
    CHECK(CHECK_ALLOC(st));
    st->e = calloc((size_t)s->p.max_batch_seqs, sizeof *st->e);
    if (!st->e) {
        free(st);
        return MM_ERROR(MM_ERR_NOMEM, "step entries");
    }
    mm_status rc = MM_OK;
    int32_t budget = s->p.max_batch_tokens;
    /* Running sequences: decodes first (one row each), then prefill chunks. */
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t i = 0; i < s->n_running && st->n < s->p.max_batch_seqs && budget > 0; i++) {
            mm_seq *seq = s->running[i];
            int32_t need = seq->n_tokens - seq->n_computed;
            if (seq->in_flight || need <= 0 || (pass == 0) != (need == 1)) continue;
            int32_t rows = need < budget ? need : budget;
            int ok;
            CHECK_GOTO(make_room(s, seq, seq->n_computed + rows, st->n, &ok), rc, fail);
            if (!ok) {
                if (!seq->running) i--; /* it preempted itself: the list moved */
                continue;
            }
            add_entry(st, seq, rows);
            budget -= rows;
        }
    }
    /* Admission, strictly first come first served (a large head is never overtaken). */
    while (s->n_waiting > 0 && st->n < s->p.max_batch_seqs && budget > 0) {
        mm_seq *seq = s->waiting[0];
        int32_t need = seq->n_tokens - seq->n_computed;
        int32_t rows = need < budget ? need : budget;
        int ok;
        CHECK_GOTO(mm_kv_blocks_grow(&s->blocks, &seq->kv, seq->n_computed + rows, &ok), rc, fail);
        if (!ok) break;
        list_remove(s->waiting, &s->n_waiting, seq);
        list_insert(s->running, &s->n_running, seq);
        seq->running = 1;
        add_entry(st, seq, rows);
        budget -= rows;
    }
    if (st->n == 0) {
        free(st->e);
        free(st);
        return MM_OK;
    }
    st->id = s->next_step_id++;
    s->in_flight[s->n_in_flight++] = st;
    s->steps++;
    *out = st;
    return MM_OK;
fail:
    for (int i = 0; i < st->n; i++) st->e[i].seq->in_flight = 0;
    free(st->e);
    free(st);
    return rc;
}

static int is_eos(const mm_sched_params *p, int32_t id) {
    for (int i = 0; i < p->n_eos; i++)
        if (p->eos_ids[i] == id) return 1;
    return 0;
}

mm_status mm_sched_step_done(mm_sched *s, mm_step *step, const mm_seq_result *results, int n_results) {
    int ri = 0;
    mm_status rc = MM_OK;
    for (int i = 0; i < step->n; i++) {
        mm_step_entry *e = &step->e[i];
        mm_seq *seq = e->seq;
        seq->in_flight = 0;
        seq->n_computed += e->n_rows;
        if (e->output != MM_OUT_NONE) {
            if (ri >= n_results || results[ri].seq_id != seq->id) {
                rc = MM_ERROR(MM_ERR_INTERNAL, "step %llu: result %d is not for sequence %llu",
                              (unsigned long long)step->id, ri, (unsigned long long)seq->id);
            } else if (!seq->removed && seq->finish == MM_FINISH_NONE) {
                const mm_seq_result *r = &results[ri];
                if (e->output == MM_OUT_TOKEN) {
                    if (r->token < 0) rc = MM_ERROR(MM_ERR_INTERNAL, "negative token from the last stage");
                    else rc = seq_push_row(seq, r->token, NULL, s->p.visual_dim);
                    seq->rng = r->rng;
                    if (rc == MM_OK && s->p.image_start_id >= 0 && r->token == s->p.image_start_id) {
                        seq->image_left = s->p.image_tokens;
                        seq->n_images++;
                    }
                } else {
                    rc = r->visual ? seq_push_row(seq, -1, r->visual, s->p.visual_dim)
                                   : MM_ERROR(MM_ERR_INTERNAL, "visual output without a vector");
                    seq->image_left--;
                }
                e->produced = rc == MM_OK;
                if (rc == MM_OK && e->output == MM_OUT_TOKEN && is_eos(&s->p, r->token)) retire(s, seq, MM_FINISH_STOP);
                else if (rc == MM_OK && seq->n_tokens >= seq->max_tokens) retire(s, seq, MM_FINISH_LENGTH);
            }
            ri++;
        }
        if (seq->removed) {
            mm_kv_blocks_release(&s->blocks, &seq->kv);
            seq_free(seq);
            e->seq = NULL;
        } else if (seq->finish != MM_FINISH_NONE) {
            mm_kv_blocks_release(&s->blocks, &seq->kv); /* finished while in flight */
        }
        if (rc != MM_OK) break;
    }
    if (rc == MM_OK && ri != n_results)
        rc = MM_ERROR(MM_ERR_INTERNAL, "step %llu: %d results for %d outputs", (unsigned long long)step->id, n_results, ri);
    return rc;
}

void mm_sched_step_release(mm_sched *s, mm_step *step) {
    for (int32_t i = 0; i < s->n_in_flight; i++)
        if (s->in_flight[i] == step) {
            memmove(&s->in_flight[i], &s->in_flight[i + 1], (size_t)(s->n_in_flight - i - 1) * sizeof *s->in_flight);
            s->n_in_flight--;
            break;
        }
    free(step->e);
    free(step);
}

void mm_sched_abort_in_flight(mm_sched *s) {
    while (s->n_in_flight > 0) {
        mm_step *st = s->in_flight[0];
        for (int i = 0; i < st->n; i++) {
            mm_seq *seq = st->e[i].seq;
            seq->in_flight = 0;
            if (seq->removed) {
                mm_kv_blocks_release(&s->blocks, &seq->kv);
                seq_free(seq);
            } else if (seq->finish != MM_FINISH_NONE) {
                mm_kv_blocks_release(&s->blocks, &seq->kv);
            }
        }
        mm_sched_step_release(s, st);
    }
}

void mm_sched_get_stats(const mm_sched *s, mm_sched_stats *st) {
    st->running = s->n_running;
    st->waiting = s->n_waiting;
    st->in_flight_steps = s->n_in_flight;
    st->kv_blocks_used = mm_kv_blocks_used(&s->blocks);
    st->kv_blocks_total = mm_kv_blocks_total(&s->blocks);
    st->preemptions = s->preemptions;
    st->steps = s->steps;
}
