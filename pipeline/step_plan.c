/* See step_plan.h. */
#include "step_plan.h"

#include <stdlib.h>
#include <string.h>

#include "proto/internal.pb-c.h"

static mm_status pack(const Metamorph__Internal__StepPlan *plan, uint8_t **buf, size_t *len) {
    size_t n = metamorph__internal__step_plan__get_packed_size(plan);
    *buf = malloc(n ? n : 1);
    CHECK(CHECK_ALLOC(*buf));
    *len = metamorph__internal__step_plan__pack(plan, *buf);
    return MM_OK;
}

mm_status mm_step_plan_pack(const mm_sched *s, const mm_step *step, uint8_t **buf, size_t *len) {
    const mm_sched_params *p = mm_sched_get_params(s);
    Metamorph__Internal__StepPlan plan = METAMORPH__INTERNAL__STEP_PLAN__INIT;
    Metamorph__Internal__SeqStep *seqs = calloc((size_t)step->n, sizeof *seqs);
    Metamorph__Internal__SeqStep **ptrs = calloc((size_t)step->n, sizeof *ptrs);
    mm_status rc = MM_OK;
    if (!seqs || !ptrs) {
        rc = MM_ERROR(MM_ERR_NOMEM, "step plan of %d sequences", step->n);
        goto out;
    }
    plan.step_id = step->id;
    plan.n_seqs = (size_t)step->n;
    plan.seqs = ptrs;
    for (int i = 0; i < step->n; i++) {
        const mm_step_entry *e = &step->e[i];
        const mm_seq *seq = e->seq;
        Metamorph__Internal__SeqStep *q = &seqs[i];
        metamorph__internal__seq_step__init(q);
        ptrs[i] = q;
        q->seq_id = seq->id;
        q->pos = e->pos;
        q->n_rows = e->n_rows;
        q->n_tokens = (size_t)e->n_rows;
        q->tokens = seq->tokens + e->pos;
        /* visual rows of this chunk are consecutive in seq->visual */
        int32_t n_vis = 0;
        for (int32_t r = 0; r < e->n_rows; r++) n_vis += seq->tokens[e->pos + r] < 0;
        if (n_vis) {
            q->n_visual = (size_t)n_vis * (size_t)p->visual_dim;
            q->visual = seq->visual + (size_t)mm_seq_visual_index(seq, e->pos) * (size_t)p->visual_dim;
        }
        q->n_block_table = (size_t)mm_kv_cache_blocks_for(e->pos + e->n_rows, p->kv_block_size);
        q->block_table = seq->kv.blocks;
        q->output = (Metamorph__Internal__OutputKind)e->output;
        q->temperature = seq->sampling.temperature;
        q->top_p = seq->sampling.top_p;
        q->top_k = seq->sampling.top_k;
        q->rng = seq->rng;
    }
    rc = pack(&plan, buf, len);
out:
    free(seqs);
    free(ptrs);
    return rc;
}
