/* See stage.h. The maths is model/llama.c's and model/metamorph.c's; this file lays the
 * plan's rows out for them. */
#include "stage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "pipeline/pipeline_mpi.h"
#include "model/manifest.h"

/* The MetaMorph heads (both, on the first and on the last stage: they are small) and
 * the buffers of MM_STAGE_VISUAL_CHUNK visual rows. */
static mm_status metamorph_load(mm_stage *st, const char *llm_dir) {
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", llm_dir);
    mm_tokenizer *tok = NULL;
    CHECK(mm_tokenizer_load(tok_path, &tok)); /* only for the image ids mm_metamorph_load checks */
    mm_status s = mm_metamorph_load(llm_dir, st->llm, tok, &st->mm);
    mm_tokenizer_free(tok);
    CHECK(s);
    st->visual_dim = st->mm->cfg.mm_hidden;
    const size_t n = MM_STAGE_VISUAL_CHUNK;
    st->z = st->be->ops->alloc(st->be, n * (size_t)st->visual_dim * sizeof(float));
    st->e = st->be->ops->alloc(st->be, n * (size_t)st->llm->cfg.dim * sizeof(float));
    if (!st->z || !st->e) return MM_ERROR(MM_ERR_NOMEM, "visual row buffers");
    return MM_OK;
}

/* Between the blocks of a step: the MPI wait hook (the stage's heartbeat to the
 * coordinator and its watch on it, pipeline/liveness.h) runs when due, so a step longer
 * than stage_liveness_ms is not taken for a dead stage. */
static mm_status beat_between_blocks(void *user) {
    (void)user;
    return mm_mpi_run_wait_hook();
}

mm_status mm_stage_init(const mm_serve_config *cfg, int32_t block_begin, int32_t block_end, int first, int last,
                        int prev, int next, mm_transport *tr, mm_stage **out) {
    mm_stage *st = calloc(1, sizeof *st);
    CHECK(CHECK_ALLOC(st));
    st->first = first, st->last = last, st->prev = prev, st->next = next, st->tr = tr;
    mm_status s;
    mm_model_paths paths;
    CHECK_GOTO(mm_model_paths_resolve(cfg->model, &paths), s, fail);
    CHECK_GOTO(mm_backend_init(cfg->backend, cfg->threads, &st->be), s, fail);
    int parts = (first ? MM_LLAMA_EMBED : 0) | (last ? MM_LLAMA_HEAD : 0);
    CHECK_GOTO(mm_llama_load_blocks(paths.llm, st->be, block_begin, block_end, parts, &st->llm), s, fail);
    st->llm->between_blocks = beat_between_blocks;
    const mm_llama_config *c = &st->llm->cfg;
    mm_dtype kv_dtype;
    CHECK_GOTO(mm_llama_kv_dtype_parse(st->llm, cfg->kv_dtype, &kv_dtype), s, fail);
    CHECK_GOTO(mm_kv_cache_init_typed(st->be, st->llm->n_kv_layers, cfg->kv_blocks, cfg->kv_block_size,
                                      c->n_kv_heads, c->head_dim, kv_dtype, &st->kv), s, fail);
    if ((first || last) && mm_metamorph_is_checkpoint(paths.llm)) CHECK_GOTO(metamorph_load(st, paths.llm), s, fail);
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
    if (st->be) st->be->ops->dealloc(st->be, st->z), st->be->ops->dealloc(st->be, st->e);
    mm_metamorph_free(st->mm);
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
        size_t n_vis = 0;
        for (int32_t t = 0; t < q->n_rows; t++) n_vis += q->tokens[t] < 0;
        if (st->first && q->n_visual != n_vis * (size_t)st->visual_dim)
            return MM_ERROR(MM_ERR_INVALID, "step %llu: sequence %llu has %zu visual rows and %zu visual floats (dim %d)",
                            (unsigned long long)plan->step_id, (unsigned long long)q->seq_id, n_vis, q->n_visual,
                            st->visual_dim);
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

/* Stage 1: token rows through embed_tokens; visual rows (token -1) through
 * mm_projector, MM_STAGE_VISUAL_CHUNK at a time, each output row put in its place. */
static mm_status embed_rows(mm_stage *st, const Metamorph__Internal__StepPlan *plan, int64_t M) {
    const int64_t dim = st->llm->cfg.dim, D = st->visual_dim;
    int64_t n_vis = 0;
    for (int64_t r = 0; r < M; r++)
        if (st->ids[r] < 0) {
            n_vis++;
            st->ids[r] = 0; /* embedded, then overwritten below */
        } else if (st->ids[r] >= st->llm->cfg.vocab_size) {
            return MM_ERROR(MM_ERR_INVALID, "token id %d outside the vocabulary of %d", st->ids[r], st->llm->cfg.vocab_size);
        }
    CHECK(mm_llama_embed(st->llm, st->ids, M, st->x));
    if (n_vis == 0) return MM_OK;
    if (!st->mm)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "step %llu has visual input rows but the model has no mm_projector",
                        (unsigned long long)plan->step_id);
    mm_backend *be = st->be;
    int64_t dest[MM_STAGE_VISUAL_CHUNK]; /* rows of x the chunk's projections go to */
    int n = 0, r = 0;
    for (size_t i = 0; i < plan->n_seqs; i++) {
        const Metamorph__Internal__SeqStep *q = plan->seqs[i];
        size_t k = 0; /* q's visual vectors, in row order */
        for (int32_t t = 0; t < q->n_rows; t++, r++) {
            if (q->tokens[t] >= 0) continue;
            CHECK(be->ops->upload(be, st->z + n * D, q->visual + k++ * (size_t)D, (size_t)D * sizeof(float)));
            dest[n++] = r;
            if (--n_vis > 0 && n < MM_STAGE_VISUAL_CHUNK) continue;
            CHECK(mm_metamorph_project(st->mm, st->z, n, st->e));
            for (int j = 0; j < n; j++)
                CHECK(be->ops->copy(be, st->x + dest[j] * dim, st->e + (int64_t)j * dim, (size_t)dim * sizeof(float)));
            n = 0;
        }
    }
    return MM_OK;
}

/* Stage P: the final norm on the last row of every sequence that wants an output; then
 * lm_head + each sequence's own sampler (parameters and rng state travel in the plan
 * and back) for token outputs, and vision_head + L2 norm for visual outputs (image
 * mode: the 1152-d vector goes back to the coordinator, which feeds it in next). */
static mm_status finish_rows(mm_stage *st, const Metamorph__Internal__StepPlan *plan,
                             Metamorph__Internal__StepResult *res) {
    const mm_llama_config *c = &st->llm->cfg;
    mm_backend *be = st->be;
    const int64_t dim = c->dim, D = st->visual_dim;
    int64_t n_tok = 0, n_vis = 0, r = 0;
    for (size_t i = 0; i < plan->n_seqs; i++) {
        Metamorph__Internal__OutputKind k = plan->seqs[i]->output;
        if (k == METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_TOKEN) n_tok++;
        else if (k == METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_VISUAL) n_vis++;
        else if (k != METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_NONE)
            return MM_ERROR(MM_ERR_INVALID, "sequence %llu: unknown output kind %d", (unsigned long long)plan->seqs[i]->seq_id, k);
    }
    if (n_tok + n_vis == 0) return MM_OK;
    if (n_vis && !st->mm)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "step %llu asks for visual tokens but the model has no vision_head",
                        (unsigned long long)plan->step_id);
    CHECK(reserve_outputs(st, n_tok + n_vis));
    res->seqs = calloc((size_t)(n_tok + n_vis), sizeof *res->seqs);
    float **vis_out = calloc((size_t)(n_vis ? n_vis : 1), sizeof *vis_out); /* [n_vis] host rows of the results */
    mm_status s = res->seqs && vis_out ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "step results");
    /* selected rows: token outputs in sel[0, n_tok), visual outputs in sel[n_tok, n_tok + n_vis) */
    int64_t ot = 0, ov = 0;
    for (size_t i = 0; s == MM_OK && i < plan->n_seqs; i++) {
        const Metamorph__Internal__SeqStep *q = plan->seqs[i];
        r += q->n_rows;
        if (q->output == METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_NONE) continue;
        int visual = q->output == METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_VISUAL;
        int64_t o = visual ? n_tok + ov : ot;
        s = be->ops->copy(be, st->sel + o * dim, st->x + (r - 1) * dim, (size_t)dim * sizeof(float));
        Metamorph__Internal__SeqResult *sr = malloc(sizeof *sr);
        if (s == MM_OK && !sr) s = MM_ERROR(MM_ERR_NOMEM, "step result");
        if (s != MM_OK) {
            free(sr);
            break;
        }
        metamorph__internal__seq_result__init(sr);
        sr->seq_id = q->seq_id;
        sr->rng = q->rng; /* a visual output does not sample: the state is unchanged */
        res->seqs[res->n_seqs++] = sr;
        if (visual) {
            sr->visual = malloc((size_t)D * sizeof(float));
            if (!sr->visual) s = MM_ERROR(MM_ERR_NOMEM, "visual result");
            sr->n_visual = (size_t)D;
            vis_out[ov++] = sr->visual;
        } else {
            st->samp[ot] = (mm_sampling){q->temperature, q->top_p, q->top_k};
            st->rng[ot] = q->rng;
            st->picked[ot] = -1;
            ot++;
        }
    }
    if (s == MM_OK && n_tok) s = mm_llama_head(st->llm, st->sel, n_tok, st->sel, st->logits);
    if (s == MM_OK && n_tok) s = be->ops->sample(be, st->logits, n_tok, c->vocab_size, st->samp, st->rng, st->picked);
    if (s == MM_OK && n_vis) s = mm_llama_head(st->llm, st->sel + n_tok * dim, n_vis, st->sel + n_tok * dim, NULL);
    for (int64_t v = 0; s == MM_OK && v < n_vis; v += MM_STAGE_VISUAL_CHUNK) {
        int64_t n = n_vis - v < MM_STAGE_VISUAL_CHUNK ? n_vis - v : MM_STAGE_VISUAL_CHUNK;
        s = mm_metamorph_predict(st->mm, st->sel + (n_tok + v) * dim, n, st->z);
        for (int64_t j = 0; s == MM_OK && j < n; j++)
            s = be->ops->download(be, vis_out[v + j], st->z + j * D, (size_t)D * sizeof(float));
    }
    /* sampled ids and rng states back into the results, in plan order */
    ot = 0;
    for (size_t i = 0; s == MM_OK && i < res->n_seqs; i++)
        if (!res->seqs[i]->visual) res->seqs[i]->token = st->picked[ot], res->seqs[i]->rng = st->rng[ot], ot++;
    free(vis_out);
    return s;
}

mm_status mm_stage_run(mm_stage *st, const Metamorph__Internal__StepPlan *plan, Metamorph__Internal__StepResult *res) {
    int64_t M = 0;
    CHECK(layout_rows(st, plan, &M));
    const size_t n = (size_t)M * (size_t)st->llm->cfg.dim;
    if (M > 0 && !st->first) CHECK(st->tr->ops->recv(st->tr, st->prev, st->x, n));
    double t0 = mm_now_ms();
    if (M > 0) {
        if (st->first) CHECK(embed_rows(st, plan, M));
        mm_llama_batch b = {M, st->pos, st->slots, st->rows};
        CHECK(mm_llama_forward_layers(st->llm, st->kv, &b, st->x));
    }
    if (st->last) {
        CHECK(mm_mpi_run_wait_hook()); /* the head (lm_head over a large vocabulary) is long too */
        res->step_id = plan->step_id;
        CHECK(finish_rows(st, plan, res));
        res->busy_ms = mm_now_ms() - t0;
    }
    st->busy_ms += mm_now_ms() - t0;
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
