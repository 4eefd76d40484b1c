/* Token selection from logits, shared by both CPU backends: greedy argmax (lowest id
 * wins ties, like torch.argmax) or sampling with temperature, then top-k, then top-p
 * (the order of transformers' logits warpers), from a seeded per-row generator.
 * Top-p works on a growing top-k candidate set so a 128k vocabulary is never sorted. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

static int32_t argmax(const float *x, int64_t V) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

typedef struct {
    float logit;
    int32_t id;
} cand;

/* Higher logit first; lower id first among equals (deterministic). */
static int cand_cmp(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id - y->id;
}

/* The k best candidates, sorted; k <= V. A size-k min-heap over one pass. */
static void top_k(const float *x, int64_t V, int64_t k, cand *out) {
    int64_t n = 0;
    for (int64_t i = 0; i < V; i++) {
        cand c = {x[i], (int32_t)i};
        if (n < k) {
            int64_t j = n++;
            while (j > 0 && cand_cmp(&out[(j - 1) / 2], &c) < 0) { /* parent better -> move down */
                out[j] = out[(j - 1) / 2];
                j = (j - 1) / 2;
            }
            out[j] = c;
        } else if (cand_cmp(&c, &out[0]) < 0) { /* better than the worst kept */
            int64_t j = 0;
            for (;;) {
                int64_t l = 2 * j + 1, r = l + 1, w = j;
                const cand *wc = &c;
                if (l < k && cand_cmp(&out[l], wc) > 0) w = l, wc = &out[l];
                if (r < k && cand_cmp(&out[r], wc) > 0) w = r, wc = &out[r];
                if (w == j) break;
                out[j] = out[w];
                j = w;
            }
            out[j] = c;
        }
    }
    qsort(out, (size_t)n, sizeof *out, cand_cmp);
}

static mm_status sample_row(const float *x, int64_t V, const mm_sampling *p, uint64_t *rng, int32_t *out) {
    if (p->temperature <= 0.0f) {
        *out = argmax(x, V);
        return MM_OK;
    }
    int64_t k = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    float top_p = p->top_p > 0.0f && p->top_p < 1.0f ? p->top_p : 1.0f;
    if (k == V && top_p >= 1.0f) { /* plain temperature: inverse CDF in id order */
        float mx = x[argmax(x, V)] / p->temperature;
        double total = 0.0, acc = 0.0;
        for (int64_t i = 0; i < V; i++) total += exp((double)(x[i] / p->temperature - mx));
        double r = (double)mm_rng_uniform(rng) * total;
        for (int64_t i = 0; i < V; i++) {
            acc += exp((double)(x[i] / p->temperature - mx));
            if (r < acc) {
                *out = (int32_t)i;
                return MM_OK;
            }
        }
        *out = argmax(x, V);
        return MM_OK;
    }
    int64_t n = k < 256 ? k : 256; /* grow until top-p is satisfied or k is reached */
    for (;;) {
        cand *c = malloc((size_t)n * sizeof *c);
        CHECK(CHECK_ALLOC(c));
        top_k(x, V, n, c);
        /* softmax over the whole vocabulary (or the top-k set) at this temperature */
        float mx = c[0].logit / p->temperature;
        double total = 0.0;
        if (k == V)
            for (int64_t i = 0; i < V; i++) total += exp((double)(x[i] / p->temperature - mx));
        else
            for (int64_t i = 0; i < n; i++) total += exp((double)(c[i].logit / p->temperature - mx));
        double cum = 0.0, keep_mass = 0.0;
        int64_t keep = 0;
        for (; keep < n; keep++) {
            if (keep > 0 && cum >= top_p * total) break;
            cum += exp((double)(c[keep].logit / p->temperature - mx));
        }
        keep_mass = cum;
        if (keep == n && n < k && cum < top_p * total) { /* nucleus not closed yet: widen */
            free(c);
            n = n * 4 < k ? n * 4 : k;
            continue;
        }
        double r = (double)mm_rng_uniform(rng) * keep_mass, acc = 0.0;
        int32_t pick = c[keep - 1].id;
        for (int64_t i = 0; i < keep; i++) {
            acc += exp((double)(c[i].logit / p->temperature - mx));
            if (r < acc) {
                pick = c[i].id;
                break;
            }
        }
        free(c);
        *out = pick;
        return MM_OK;
    }
}

mm_status mm_cpu_sample(mm_backend *be, const float *logits, int64_t M, int64_t V, const mm_sampling *params,
                        uint64_t *rng, int32_t *out) {
    for (int64_t m = 0; m < M; m++) CHECK(sample_row(logits + m * V, V, &params[m], &rng[m], &out[m]));
    return MM_OK;
}
