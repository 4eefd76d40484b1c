/* See stage_split.h. The balanced split is a small dynamic programme over contiguous
 * partitions (P stages x B blocks x B choices: a few million steps for the largest
 * models), exact rather than greedy. */
#include "stage_split.h"

#include <stdio.h>
#include <stdlib.h>

void mm_split_costs(const mm_llama_config *lc, int32_t decode_percent, double *block_cost, double *head_cost) {
    double dim = lc->dim, q = (double)lc->n_heads * lc->head_dim, kv = (double)lc->n_kv_heads * lc->head_dim;
    double attn = dim * (q + 2 * kv) + q * dim + 2 * q * MM_SPLIT_MEAN_CONTEXT;
    double mlp = 3 * dim * lc->hidden_dim;
    for (int32_t l = 0; l < lc->n_layers; l++) {
        block_cost[l * MM_LLAMA_BLOCKS_PER_LAYER] = attn;
        block_cost[l * MM_LLAMA_BLOCKS_PER_LAYER + 1] = mlp;
    }
    *head_cost = dim * lc->vocab_size * decode_percent / 100.0;
}

/* A partial split of blocks [0, j) into k stages: its costliest stage, and the sum of
 * squared stage costs (smaller = more even) to break ties. */
typedef struct {
    double max, sq;
    int32_t from; /* where its last stage begins */
} partial;

static int better(double max, double sq, const partial *than) {
    if (than->from < 0) return 1;
    double tol = 1e-9 * (max > than->max ? max : than->max);
    if (max < than->max - tol) return 1;
    return max <= than->max + tol && sq < than->sq - 1e-9 * sq;
}

static mm_status balanced(const double *cost, int32_t B, double head, int32_t P, int32_t *begin, int32_t *end) {
    double *pre = malloc((size_t)(B + 1) * sizeof *pre);
    partial *t = malloc((size_t)(P + 1) * (size_t)(B + 1) * sizeof *t); /* t[k * (B + 1) + j] */
    if (!pre || !t) {
        free(pre), free(t);
        return MM_ERROR(MM_ERR_NOMEM, "stage split tables (%d stages x %d blocks)", P, B);
    }
    pre[0] = 0;
    for (int32_t i = 0; i < B; i++) pre[i + 1] = pre[i] + cost[i];
    for (size_t i = 0; i < (size_t)(P + 1) * (size_t)(B + 1); i++) t[i] = (partial){0, 0, -1};
    t[0] = (partial){0, 0, 0}; /* no stage, no block */
    for (int32_t k = 1; k <= P; k++)
        for (int32_t j = k; j <= B - (P - k); j++) {
            partial *best = &t[k * (B + 1) + j];
            for (int32_t i = k - 1; i < j; i++) {
                const partial *prev = &t[(k - 1) * (B + 1) + i];
                if (prev->from < 0) continue;
                double c = pre[j] - pre[i] + (k == P ? head : 0);
                double max = c > prev->max ? c : prev->max, sq = prev->sq + c * c;
                if (better(max, sq, best)) *best = (partial){max, sq, i};
            }
        }
    for (int32_t k = P, j = B; k >= 1; k--) {
        begin[k - 1] = t[k * (B + 1) + j].from, end[k - 1] = j;
        j = begin[k - 1];
    }
    free(pre), free(t);
    return MM_OK;
}

mm_status mm_split_stages(const mm_serve_config *c, const mm_llama_config *lc, int32_t n_stages, int32_t *begin,
                          int32_t *end) {
    const int32_t per = MM_LLAMA_BLOCKS_PER_LAYER, B = lc->n_layers * per;
    if (n_stages < 1 || n_stages > MM_MAX_STAGES)
        return MM_ERROR(MM_ERR_INVALID, "%d pipeline stages (1..%d)", n_stages, MM_MAX_STAGES);
    if (c->n_stage_layers) {
        if (c->n_stage_layers != n_stages)
            return MM_ERROR(MM_ERR_INVALID, "stage_layers names %d stages, the job has %d", c->n_stage_layers,
                            n_stages);
        int32_t a = 0;
        for (int32_t k = 0; k < n_stages; k++) {
            if (c->stage_layers[k] < 1) return MM_ERROR(MM_ERR_INVALID, "stage_layers[%d] must be >= 1", k);
            begin[k] = a * per, a += c->stage_layers[k], end[k] = a * per;
        }
        if (a != lc->n_layers)
            return MM_ERROR(MM_ERR_INVALID, "stage_layers sum to %d, the model has %d layers", a, lc->n_layers);
        return MM_OK;
    }
    if (n_stages > B)
        return MM_ERROR(MM_ERR_INVALID, "%d stages for a model of %d layers (%d half-layer blocks)", n_stages,
                        lc->n_layers, B);
    double *cost = malloc((size_t)B * sizeof *cost), head;
    if (!cost) return MM_ERROR(MM_ERR_NOMEM, "stage split costs");
    mm_split_costs(lc, c->split_decode_percent, cost, &head);
    mm_status s = balanced(cost, B, head, n_stages, begin, end);
    free(cost);
    return s;
}

void mm_split_describe(int32_t begin, int32_t end, char *buf, size_t n) {
    const int32_t per = MM_LLAMA_BLOCKS_PER_LAYER;
    int32_t whole_a = (begin + per - 1) / per, whole_b = end / per; /* whole layers [whole_a, whole_b) */
    size_t k = 0;
    buf[0] = 0;
#define PUT(...) k += (size_t)snprintf(buf + k, k < n ? n - k : 0, __VA_ARGS__)
    if (end - begin == 1) { /* one half-layer */
        PUT("%d.%s", begin / per, begin % per ? "mlp" : "self_attn");
        return;
    }
    if (begin % per) PUT("%d.mlp", begin / per);
    if (whole_b > whole_a) PUT("%slayers [%d, %d)", begin % per ? " + " : "", whole_a, whole_b);
    if (end % per) PUT("%s%d.self_attn", whole_b > whole_a || begin % per ? " + " : "", end / per);
    if (k >= n && n) buf[n - 1] = 0;
#undef PUT
}
