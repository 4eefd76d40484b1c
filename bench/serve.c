/* bench/serve: load generator for a running service, in the manner of vLLM's
 * benchmark_serving: Poisson arrivals at --rate requests/s (inf: all at once) with at
 * most --concurrency in flight, prompt and output lengths uniform in
 * [len * (1 - range), len * (1 + range)], streaming so that TTFT and inter-token
 * latencies are seen. Prints one JSON object: throughput, TTFT / TPOT / ITL / E2E
 * mean, median, p99 (ms), and each stage's utilisation (busy / wall) over the run. */
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/metamorph.pb-c.h"
#include "tools/mm_client.h"

typedef struct {
    const char *server;
    int n, concurrency, in_len, out_len;
    double rate, range;
    unsigned seed;
} bench_args;

typedef struct {
    double arrival, start, first, end;
    double *itl;          /* gaps between token deltas, ms */
    int n_itl, cap_itl, n_out, n_in, code;
    double last;
    int in_len, out_len;
} req_stat;

static bench_args A;
static req_stat *R;
static mm_client *CL;
static atomic_int next_req;
static double T0;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int on_event(void *user, const uint8_t *d, size_t n) {
    req_stat *r = user;
    Metamorph__V1__GenerateEvent *ev = metamorph__v1__generate_event__unpack(NULL, n, d);
    if (!ev) return 1;
    double t = now_s();
    if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_DELTA && ev->delta->n_token_ids) {
        if (r->n_out == 0) r->first = t;
        else if (r->n_itl < r->cap_itl) r->itl[r->n_itl++] = (t - r->last) * 1e3;
        r->last = t;
        r->n_out += (int)ev->delta->n_token_ids;
    } else if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_FINAL && ev->final->usage) {
        r->n_in = ev->final->usage->prompt_tokens;
    }
    metamorph__v1__generate_event__free_unpacked(ev, NULL);
    return 0;
}

static const char *WORDS[] = {"the", "cat", "sat", "on", "a", "mat", "and", "looked", "at", "sea", "mountain", "river"};

static void *worker(void *arg) {
    for (;;) {
        int i = atomic_fetch_add(&next_req, 1);
        if (i >= A.n) return NULL;
        req_stat *r = &R[i];
        double wait = T0 + r->arrival - now_s();
        if (wait > 0) usleep((useconds_t)(wait * 1e6));
        char *prompt = malloc((size_t)r->in_len * 10 + 1);
        size_t o = 0;
        for (int w = 0; w < r->in_len; w++) o += (size_t)sprintf(prompt + o, "%s%s", w ? " " : "", WORDS[(i + w * 7) % 12]);
        prompt[o] = 0;
        Metamorph__V1__ContentPart part = METAMORPH__V1__CONTENT_PART__INIT, *pp = &part;
        part.kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT, part.text = prompt;
        Metamorph__V1__ChatMessage m = METAMORPH__V1__CHAT_MESSAGE__INIT, *mp = &m;
        m.role = (char *)"user", m.n_parts = 1, m.parts = &pp;
        Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
        sp.max_new_tokens = r->out_len;
        Metamorph__V1__GenerateRequest req = METAMORPH__V1__GENERATE_REQUEST__INIT;
        req.n_messages = 1, req.messages = &mp, req.sampling = &sp;
        size_t len = metamorph__v1__generate_request__get_packed_size(&req);
        uint8_t *buf = malloc(len);
        metamorph__v1__generate_request__pack(&req, buf);
        r->cap_itl = r->out_len + 1;
        r->itl = malloc((size_t)r->cap_itl * sizeof *r->itl);
        r->start = now_s();
        r->code = mm_client_call(CL, "/metamorph.v1.MetaMorph/GenerateStream", buf, len, 600, on_event, r, NULL, 0);
        r->end = now_s();
        free(buf);
        free(prompt);
    }
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void stats(const char *name, double *v, int n, int last) {
    double mean = 0;
    for (int i = 0; i < n; i++) mean += v[i];
    mean = n ? mean / n : 0;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    double med = n ? v[n / 2] : 0, p99 = n ? v[(int)fmin(n - 1, ceil(0.99 * n) - 1)] : 0;
    printf("  \"mean_%s_ms\": %.3f, \"median_%s_ms\": %.3f, \"p99_%s_ms\": %.3f%s\n", name, mean, name, med, name, p99,
           last ? "" : ",");
}

static int on_info(void *user, const uint8_t *d, size_t n) {
    *(Metamorph__V1__ModelInfo **)user = metamorph__v1__model_info__unpack(NULL, n, d);
    return 0;
}

static Metamorph__V1__ModelInfo *get_info(void) {
    Metamorph__V1__ModelInfo *m = NULL;
    mm_client_call(CL, "/metamorph.v1.MetaMorph/GetModelInfo", "", 0, 10, on_info, &m, NULL, 0);
    return m;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"server", 1, 0, 's'},      {"num-prompts", 1, 0, 'n'}, {"rate", 1, 0, 'r'},
                                         {"concurrency", 1, 0, 'c'}, {"input-len", 1, 0, 'i'},   {"output-len", 1, 0, 'o'},
                                         {"range-ratio", 1, 0, 'g'}, {"seed", 1, 0, 'S'},        {0, 0, 0, 0}};
    A = (bench_args){"127.0.0.1:50051", 64, 16, 64, 64, INFINITY, 0.0, 0};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': A.server = optarg; break;
        case 'n': A.n = atoi(optarg); break;
        case 'r': A.rate = atof(optarg); break;
        case 'c': A.concurrency = atoi(optarg); break;
        case 'i': A.in_len = atoi(optarg); break;
        case 'o': A.out_len = atoi(optarg); break;
        case 'g': A.range = atof(optarg); break;
        case 'S': A.seed = (unsigned)atoi(optarg); break;
        default:
            fprintf(stderr, "usage: serve [--server ADDR] [--num-prompts N] [--rate R|inf] [--concurrency C]\n"
                            "             [--input-len L] [--output-len L] [--range-ratio F] [--seed S]\n");
            return 2;
        }
    }
    if (A.n < 1 || A.concurrency < 1) return 2;
    if (mm_client_open(A.server, &CL) != MM_OK) return 14;
    R = calloc((size_t)A.n, sizeof *R);
    srand(A.seed);
    double t = 0;
    for (int i = 0; i < A.n; i++) {
        if (isfinite(A.rate) && A.rate > 0) t += -log(1.0 - (double)rand() / ((double)RAND_MAX + 1)) / A.rate;
        R[i].arrival = t;
        double u1 = (double)rand() / RAND_MAX, u2 = (double)rand() / RAND_MAX;
        R[i].in_len = (int)fmax(1, round(A.in_len * (1 - A.range + 2 * A.range * u1)));
        R[i].out_len = (int)fmax(1, round(A.out_len * (1 - A.range + 2 * A.range * u2)));
    }
    Metamorph__V1__ModelInfo *before = get_info();
    if (!before) {
        fprintf(stderr, "serve: GetModelInfo failed on %s\n", A.server);
        return 14;
    }
    pthread_t *th = calloc((size_t)A.concurrency, sizeof *th);
    T0 = now_s();
    for (int i = 0; i < A.concurrency; i++) pthread_create(&th[i], NULL, worker, NULL);
    for (int i = 0; i < A.concurrency; i++) pthread_join(th[i], NULL);
    double wall = now_s() - T0;
    Metamorph__V1__ModelInfo *after = get_info();
    int ok = 0;
    long out_tok = 0, in_tok = 0, n_itl = 0;
    double *ttft = calloc((size_t)A.n, sizeof(double)), *tpot = calloc((size_t)A.n, sizeof(double));
    double *e2e = calloc((size_t)A.n, sizeof(double));
    int n_tpot = 0;
    for (int i = 0; i < A.n; i++) n_itl += R[i].n_itl;
    double *itl = calloc((size_t)(n_itl ? n_itl : 1), sizeof(double));
    n_itl = 0;
    for (int i = 0; i < A.n; i++) {
        req_stat *r = &R[i];
        if (r->code != 0 || r->n_out == 0) continue;
        ttft[ok] = (r->first - r->start) * 1e3;
        e2e[ok] = (r->end - r->start) * 1e3;
        ok++;
        out_tok += r->n_out, in_tok += r->n_in;
        if (r->n_out > 1) tpot[n_tpot++] = (r->end - r->first) * 1e3 / (r->n_out - 1);
        memcpy(itl + n_itl, r->itl, (size_t)r->n_itl * sizeof(double));
        n_itl += r->n_itl;
    }
    printf("{\n  \"server\": \"%s\", \"model\": \"%s\", \"stages\": %zu,\n", A.server, before->model, before->n_stages);
    printf("  \"num_prompts\": %d, \"request_rate\": %s%.3g%s, \"concurrency\": %d, \"input_len\": %d, \"output_len\": %d, "
           "\"range_ratio\": %.2f,\n",
           A.n, isfinite(A.rate) ? "" : "\"", isfinite(A.rate) ? A.rate : INFINITY, isfinite(A.rate) ? "" : "\"",
           A.concurrency, A.in_len, A.out_len, A.range);
    printf("  \"completed\": %d, \"failed\": %d, \"duration_s\": %.3f, \"total_input_tokens\": %ld, \"total_output_tokens\": %ld,\n",
           ok, A.n - ok, wall, in_tok, out_tok);
    printf("  \"request_throughput\": %.3f, \"output_throughput\": %.2f, \"total_token_throughput\": %.2f,\n", ok / wall,
           out_tok / wall, (in_tok + out_tok) / wall);
    printf("  \"stage_utilisation\": [");
    for (size_t k = 0; after && k < after->n_stages && k < before->n_stages; k++)
        printf("%s%.3f", k ? ", " : "", (after->stages[k]->busy_ms - before->stages[k]->busy_ms) / (wall * 1e3));
    printf("],\n");
    stats("ttft", ttft, ok, 0);
    stats("tpot", tpot, n_tpot, 0);
    stats("itl", itl, (int)n_itl, 0);
    stats("e2el", e2e, ok, 1);
    printf("}\n");
    return ok == A.n ? 0 : 1;
}
