/* The pipeline split by modelled cost (pipeline/stage_split.h): balanced within 10% on
 * the 110m preset with a 128k vocabulary at P = 2 and 3 where an even split of layers is
 * not, optimal against brute force on small models, the stage_layers override, errors,
 * and the text the banner shows. */
#include <string.h>

#include "pipeline/stage_split.h"
#include "tests/testutil.h"

static mm_llama_config shapes(int32_t dim, int32_t layers, int32_t heads, int32_t kv_heads, int32_t hidden,
                              int32_t vocab) {
    mm_llama_config c = {0};
    c.dim = dim, c.n_layers = layers, c.n_heads = heads, c.n_kv_heads = kv_heads, c.head_dim = dim / heads;
    c.hidden_dim = hidden, c.vocab_size = vocab;
    return c;
}

/* Modelled cost of each stage of a split. */
static void stage_costs(const mm_llama_config *lc, int32_t pct, const int32_t *begin, const int32_t *end, int P,
                        double *out) {
    double cost[512], head;
    mm_split_costs(lc, pct, cost, &head);
    for (int k = 0; k < P; k++) {
        out[k] = k == P - 1 ? head : 0;
        for (int32_t b = begin[k]; b < end[k]; b++) out[k] += cost[b];
    }
}

static double spread(const double *c, int P) { /* costliest / cheapest stage */
    double mx = c[0], mn = c[0];
    for (int k = 1; k < P; k++) mx = c[k] > mx ? c[k] : mx, mn = c[k] < mn ? c[k] : mn;
    return mx / mn;
}

static void check_110m_128k(void) {
    mm_llama_config lc = shapes(768, 12, 12, 12, 2048, 128256);
    mm_serve_config cfg;
    mm_serve_config_defaults(&cfg);
    for (int P = 2; P <= 3; P++) {
        int32_t b[8], e[8];
        double c[8];
        EXPECT(mm_split_stages(&cfg, &lc, P, b, e) == MM_OK, "%s", mm_error_last());
        EXPECT(b[0] == 0 && e[P - 1] == 24, "P=%d covers [%d, %d)", P, b[0], e[P - 1]);
        for (int k = 1; k < P; k++) EXPECT(b[k] == e[k - 1] && e[k] > b[k], "P=%d stage %d [%d, %d)", P, k, b[k], e[k]);
        stage_costs(&lc, cfg.split_decode_percent, b, e, P, c);
        EXPECT(spread(c, P) <= 1.10, "P=%d: stages %.3g..%.3g apart by %.3f", P, c[0], c[P - 1], spread(c, P));
        /* the even split of layers this replaces is far off */
        int32_t eb[3], ee[3];
        for (int k = 0; k < P; k++) eb[k] = 24 * k / P, ee[k] = 24 * (k + 1) / P;
        stage_costs(&lc, cfg.split_decode_percent, eb, ee, P, c);
        EXPECT(spread(c, P) > 1.5, "P=%d: the even split is already balanced (%.3f)?", P, spread(c, P));
    }
    /* without sampled tokens the head weighs nothing: the two halves get equal layers */
    cfg.split_decode_percent = 0;
    int32_t b[2], e[2];
    EXPECT(mm_split_stages(&cfg, &lc, 2, b, e) == MM_OK && e[0] == 12, "decode 0%%: first stage ends at %d", e[0]);
}

/* Smallest possible costliest stage over every split of B blocks into P stages. */
static double brute_best(const double *cost, int B, double head, int P, int from, double worst) {
    if (P == 1) {
        double c = head;
        for (int b = from; b < B; b++) c += cost[b];
        return c > worst ? c : worst;
    }
    double best = 1e300;
    for (int end = from + 1; end <= B - (P - 1); end++) {
        double c = 0;
        for (int b = from; b < end; b++) c += cost[b];
        double r = brute_best(cost, B, head, P - 1, end, c > worst ? c : worst);
        best = r < best ? r : best;
    }
    return best;
}

static void check_optimal(void) {
    const mm_llama_config models[] = {shapes(128, 4, 8, 4, 352, 1794), shapes(64, 5, 4, 2, 172, 512),
                                      shapes(256, 3, 4, 4, 688, 32000)};
    for (size_t i = 0; i < sizeof models / sizeof *models; i++) {
        const mm_llama_config *lc = &models[i];
        int B = lc->n_layers * MM_LLAMA_BLOCKS_PER_LAYER;
        for (int pct = 0; pct <= 100; pct += 50)
            for (int P = 1; P <= B && P <= 6; P++) {
                mm_serve_config cfg;
                mm_serve_config_defaults(&cfg);
                cfg.split_decode_percent = pct;
                int32_t b[8], e[8];
                double c[8], cost[64], head;
                EXPECT(mm_split_stages(&cfg, lc, P, b, e) == MM_OK, "%s", mm_error_last());
                stage_costs(lc, pct, b, e, P, c);
                double mx = 0;
                for (int k = 0; k < P; k++) mx = c[k] > mx ? c[k] : mx;
                mm_split_costs(lc, pct, cost, &head);
                double want = brute_best(cost, B, head, P, 0, 0);
                EXPECT(mx <= want * (1 + 1e-12), "model %zu, %d%%, P=%d: costliest stage %.6g, best possible %.6g", i,
                       pct, P, mx, want);
            }
    }
}

static void check_override_and_errors(void) {
    mm_llama_config lc = shapes(128, 4, 8, 4, 352, 1794);
    mm_serve_config cfg;
    mm_serve_config_defaults(&cfg);
    int32_t b[MM_MAX_STAGES], e[MM_MAX_STAGES];
    cfg.n_stage_layers = 2, cfg.stage_layers[0] = 3, cfg.stage_layers[1] = 1;
    EXPECT(mm_split_stages(&cfg, &lc, 2, b, e) == MM_OK && b[0] == 0 && e[0] == 6 && b[1] == 6 && e[1] == 8,
           "stage_layers [3, 1] -> blocks [%d, %d) [%d, %d)", b[0], e[0], b[1], e[1]);
    EXPECT(mm_split_stages(&cfg, &lc, 3, b, e) != MM_OK && strstr(mm_error_last(), "names 2 stages"), "%s",
           mm_error_last());
    cfg.stage_layers[1] = 2;
    EXPECT(mm_split_stages(&cfg, &lc, 2, b, e) != MM_OK && strstr(mm_error_last(), "sum to 5"), "%s", mm_error_last());
    cfg.n_stage_layers = 0;
    EXPECT(mm_split_stages(&cfg, &lc, 8, b, e) == MM_OK && e[0] == 1 && b[7] == 7, "P=8 on 4 layers: a block each");
    EXPECT(mm_split_stages(&cfg, &lc, 9, b, e) != MM_OK && strstr(mm_error_last(), "half-layer"), "%s",
           mm_error_last());
    EXPECT(mm_split_stages(&cfg, &lc, 0, b, e) != MM_OK, "0 stages accepted");
}

static void check_describe(void) {
    const struct {
        int32_t b, e;
        const char *want;
    } cases[] = {{0, 8, "layers [0, 4)"},           {0, 7, "layers [0, 3) + 3.self_attn"},
                 {3, 8, "1.mlp + layers [2, 4)"},   {3, 6, "1.mlp + layers [2, 3)"},
                 {3, 5, "1.mlp + 2.self_attn"},     {4, 5, "2.self_attn"},
                 {5, 6, "2.mlp"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[128];
        mm_split_describe(cases[i].b, cases[i].e, buf, sizeof buf);
        EXPECT(!strcmp(buf, cases[i].want), "[%d, %d): \"%s\", want \"%s\"", cases[i].b, cases[i].e, buf, cases[i].want);
    }
}

int main(void) {
    check_110m_128k();
    check_optimal();
    check_override_and_errors();
    check_describe();
    return mm_test_finish("test_stage_split");
}
