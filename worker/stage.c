/* See stage.h. The maths is model/llama.c's; this file lays the plan's rows out for it. */
#include "stage.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/manifest.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

mm_status mm_stage_init(const mm_serve_config *cfg, int32_t layer_begin, int32_t layer_end, int first, int last,
                        int prev, int next, mm_transport *tr, mm_stage **out) {
    mm_stage *st = calloc(1, sizeof *st);
    CHECK(CHECK_ALLOC(st));
    st->first = first, st->last = last, st->prev = prev, st->next = next, st->tr = tr;
    mm_status s;
    mm_model_paths paths;
    CHECK_GOTO(mm_model_paths_resolve(cfg->model, &paths), s, fail);
    CHECK_GOTO(mm_backend_init(cfg->backend, cfg->threads, &st->be), s, fail);
    int parts = (first ? MM_LLAMA_EMBED : 0) | (last ? MM_LLAMA_HEAD : 0);
    CHECK_GOTO(mm_llama_load(paths.llm, st->be, layer_begin, layer_end, parts, &st->llm), s, fail);
    const mm_llama_config *c = &st->llm->cfg;
    CHECK_GOTO(mm_kv_cache_init(st->be, layer_end - layer_begin, cfg->kv_blocks, cfg->kv_block_size, c->n_kv_heads,
                                c->head_dim, &st->kv), s, fail);
    *out = st;
    return MM_OK;
fail:
    mm_stage_free(st);
    return s;
}

static void free_buffers(mm_stage *st) {
    if (st->be) {
        st->be->ops->dealloc(st->be, st->x);
        st->be->ops->dealloc(st->be, st->sel);
        st->be->ops->dealloc(st->be, st->logits);
    }
    free(st->ids), free(st->pos), free(st->slots), free(st->rows);
    free(st->samp), free(st->rng), free(st->picked);
}

void mm_stage_free(mm_stage *st) {
    if (!st) return;
    free_buffers(st);
    mm_kv_cache_free(st->kv);
    mm_llama_free(st->llm);
    mm_backend_free(st->be);
    free(st);
}

static mm_status reserve_rows(mm_stage *st, int64_t n) {
    if (n <= st->cap) return MM_OK;
    int64_t cap = st->cap ? st->cap : 64;
    while (cap < n) cap *= 2;
    const mm_llama_config *c = &st->llm->cfg;
    st->be->ops->dealloc(st->be, st->x);
    st->x = st->be->ops->alloc(st->be, (size_t)cap * (size_t)c->dim * sizeof(float));
    free(st->ids), free(st->pos), free(st->slots), free(st->rows);
    st->ids = malloc((size_t)cap * sizeof *st->ids);
    st->pos = malloc((size_t)cap * sizeof *st->pos);
    st->slots = malloc((size_t)cap * sizeof *st->slots);
    st->rows = malloc((size_t)cap * sizeof *st->rows);
    st->cap = 0;
    if (!st->x || !st->ids || !st->pos || !st->slots || !st->rows)
        return MM_ERROR(MM_ERR_NOMEM, "stage buffers for %lld rows", (long long)cap);
    st->cap = cap;
    return MM_OK;
}

static mm_status reserve_outputs(mm_stage *st, int64_t n) {
    if (n <= st->out_cap) return MM_OK;
    int64_t cap = st->out_cap ? st->out_cap : 16;
    while (cap < n) cap *= 2;
    const mm_llama_config *c = &st->llm->cfg;
    st->be->ops->dealloc(st->be, st->sel);
    st->be->ops->dealloc(st->be, st->logits);
    st->sel = st->be->ops->alloc(st->be, (size_t)cap * (size_t)c->dim * sizeof(float));
    st->logits = st->be->ops->alloc(st->be, (size_t)cap * (size_t)c->vocab_size * sizeof(float));
    free(st->samp), free(st->rng), free(st->picked);
    st->samp = malloc((size_t)cap * sizeof *st->samp);
    st->rng = malloc((size_t)cap * sizeof *st->rng);
    st->picked = malloc((size_t)cap * sizeof *st->picked);
    st->out_cap = 0;
    if (!st->sel || !st->logits || !st->samp || !st->rng || !st->picked)
        return MM_ERROR(MM_ERR_NOMEM, "stage output buffers for %lld rows", (long long)cap);
    st->out_cap = cap;
    return MM_OK;
}

/* Positions, KV slots and attention rows of every row of the plan; checks the plan
 * against this stage's cache (a bad plan is a coordinator bug, never a crash here). */
static mm_status layout_rows(mm_stage *st, const Metamorph__Internal__StepPlan *plan, int64_t *n_rows) {
    int64_t M = 0;
    for (size_t i = 0; i < plan->n_seqs; i++) {
        const Metamorph__Internal__SeqStep *q = plan->seqs[i];
        if (q->n_rows < 1 || (size_t)q->n_rows != q->n_tokens || q->pos < 0)
            return MM_ERROR(MM_ERR_INVALID, "step %llu: sequence %llu has %d rows, %zu tokens, pos %d",
                            (unsigned long long)plan->step_id, (unsigned long long)q->seq_id, q->n_rows, q->n_tokens, q->pos);
        M += q->n_rows;
    }
    CHECK(reserve_rows(st, M));
    const int32_t bs = st->kv->block_size;
    int64_t r = 0;
    for (size_t i = 0; i < plan->n_seqs; i++) {
        const Metamorph__Internal__SeqStep *q = plan->seqs[i];
        if ((int64_t)q->n_block_table * bs < (int64_t)q->pos + q->n_rows)
            return MM_ERROR(MM_ERR_INVALID, "sequence %llu: %zu blocks for %d positions",
                            (unsigned long long)q->seq_id, q->n_block_table, q->pos + q->n_rows);
        for (size_t b = 0; b < q->n_block_table; b++)
            if (q->block_table[b] < 0 || q->block_table[b] >= st->kv->n_blocks)
                return MM_ERROR(MM_ERR_INVALID, "sequence %llu: block %d outside the cache of %d",
                                (unsigned long long)q->seq_id, q->block_table[b], st->kv->n_blocks);
        for (int32_t t = 0; t < q->n_rows; t++, r++) {
            int32_t p = q->pos + t;
            st->ids[r] = q->tokens[t];
            st->pos[r] = p;
            st->slots[r] = q->block_table[p / bs] * bs + p % bs;
            st->rows[r] = (mm_attn_row){q->block_table, p + 1};
        }
    }
    *n_rows = M;
    return MM_OK;
}

/* Stage 1: token rows through embed_tokens; visual rows through mm_projector. */
static mm_status embed_rows(mm_stage *st, const Metamorph__Internal__StepPlan *plan, int64_t M) {
    int has_visual = 0;
    for (int64_t r = 0; r < M; r++)
        if (st->ids[r] < 0) {
            has_visual = 1;
            st->ids[r] = 0; /* embedded, then overwritten below */
        } else if (st->ids[r] >= st->llm->cfg.vocab_size) {
            return MM_ERROR(MM_ERR_INVALID, "token id %d outside the vocabulary of %d", st->ids[r], st->llm->cfg.vocab_size);
        }
    CHECK(mm_llama_embed(st->llm, st->ids, M, st->x));
    if (has_visual)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "step %llu has visual input rows: mm_projector (model/metamorph) is not "
                        "part of this build yet", (unsigned long long)plan->step_id);
    return MM_OK;
}

/* Stage P: final norm + lm_head on the rows that want a token, then each sequence's
 * own sampler (parameters and rng state travel in the plan and back). */
static mm_status finish_rows(mm_stage *st, const Metamorph__Internal__StepPlan *plan,
                             Metamorph__Internal__StepResult *res) {
    const mm_llama_config *c = &st->llm->cfg;
    mm_backend *be = st->be;
    int64_t n_out = 0, r = 0;
    for (size_t i = 0; i < plan->n_seqs; i++) n_out += plan->seqs[i]->output != METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_NONE;
    if (n_out == 0) return MM_OK;
    CHECK(reserve_outputs(st, n_out));
    res->seqs = calloc((size_t)n_out, sizeof *res->seqs);
    CHECK(CHECK_ALLOC(res->seqs));
    int64_t o = 0;
    for (size_t i = 0; i < plan->n_seqs; i++) {
        const Metamorph__Internal__SeqStep *q = plan->seqs[i];
        r += q->n_rows;
        if (q->output == METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_NONE) continue;
        if (q->output != METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_TOKEN)
            return MM_ERROR(MM_ERR_UNSUPPORTED, "sequence %llu wants a visual token: the vision head (model/metamorph) "
                            "is not part of this build yet", (unsigned long long)q->seq_id);
        CHECK(be->ops->copy(be, st->sel + o * c->dim, st->x + (r - 1) * c->dim, (size_t)c->dim * sizeof(float)));
        st->samp[o] = (mm_sampling){q->temperature, q->top_p, q->top_k};
        st->rng[o] = q->rng;
        o++;
    }
    CHECK(mm_llama_head(st->llm, st->sel, n_out, st->sel, st->logits));
    CHECK(be->ops->sample(be, st->logits, n_out, c->vocab_size, st->samp, st->rng, st->picked));
    o = 0;
    for (size_t i = 0; i < plan->n_seqs; i++) {
        const Metamorph__Internal__SeqStep *q = plan->seqs[i];
        if (q->output == METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_NONE) continue;
        Metamorph__Internal__SeqResult *sr = malloc(sizeof *sr);
        CHECK(CHECK_ALLOC(sr));
        metamorph__internal__seq_result__init(sr);
        sr->seq_id = q->seq_id;
        sr->token = st->picked[o];
        sr->rng = st->rng[o];
        res->seqs[res->n_seqs++] = sr;
        o++;
    }
    return MM_OK;
}

mm_status mm_stage_run(mm_stage *st, const Metamorph__Internal__StepPlan *plan, Metamorph__Internal__StepResult *res) {
    int64_t M = 0;
    CHECK(layout_rows(st, plan, &M));
    const size_t n = (size_t)M * (size_t)st->llm->cfg.dim;
    if (M > 0 && !st->first) CHECK(st->tr->ops->recv(st->tr, st->prev, st->x, n));
    double t0 = now_ms();
    if (M > 0) {
        if (st->first) CHECK(embed_rows(st, plan, M));
        mm_llama_batch b = {M, st->pos, st->slots, st->rows};
        CHECK(mm_llama_forward_layers(st->llm, st->kv, &b, st->x));
    }
    if (st->last) {
        res->step_id = plan->step_id;
        CHECK(finish_rows(st, plan, res));
        res->busy_ms = now_ms() - t0;
    }
    st->busy_ms += now_ms() - t0;
    st->steps++;
    if (M > 0 && !st->last) CHECK(st->tr->ops->send(st->tr, st->next, st->x, n));
    return MM_OK;
}

void mm_stage_result_free(Metamorph__Internal__StepResult *res) {
    for (size_t i = 0; i < res->n_seqs; i++) {
        free(res->seqs[i]->visual);
        free(res->seqs[i]);
    }
    free(res->seqs);
    res->seqs = NULL;
    res->n_seqs = 0;
}
