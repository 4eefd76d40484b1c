/* Integration tests of the whole service on loopback, each starting and stopping its
 * own `mpiexec mm-coordinator : mm-stage x P` job:
 *   test_service greedy P   COORD STAGE MM_RUN  greedy output == mm-run --ids (unary + stream)
 *   test_service greedy_q8 P COORD STAGE MM_RUN MM_QUANTIZE
 *                                               the same on a model root whose llm/ is the tiny LLM
 *                                               converted to q8 (int8 weights: its ids are not f32's,
 *                                               but the service's must equal mm-run's on it)
 *   test_service prefix P   COORD STAGE MM_RUN  prefix caching: a workload sharing a long instruction
 *                                               (greedy, sampled with seeds, multi-turn, concurrent on
 *                                               a small cache) gives the same ids with the cache on
 *                                               as off, greedy ones == mm-run; hits and evictions seen
 *   test_service concurrent COORD STAGE         32 concurrent requests == each one alone; KV back to 0
 *   test_service errors     COORD STAGE         every validation rule, malformed/unknown/oversized,
 *                                               queue full, 1 ms deadline, client cancel
 *   test_service kill       COORD STAGE         a killed stage: UNAVAILABLE fast, NOT_SERVING, job exits
 *   test_service python     COORD STAGE SCRIPT  a Python grpcio client as an independent client
 *                                               (args: TARGET SOURCE_DIR WORK_DIR METRICS_ADDR HTTP_ADDR;
 *                                               $MM_PYTHON runs it, default Debian's python3;
 *                                               $MM_SERVICE_EXTRA adds config keys) */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "service.h"
#include "tests/testutil.h"
#include "tools/generate_request.h"

static const char *PROMPTS[] = {"Describe a cat.", "Hi", "Write a long story about the sea and the mountains, please.",
                                "What is 2 + 2?", "Tell me about pipelines"};
#define N_PROMPTS (int)(sizeof PROMPTS / sizeof PROMPTS[0])

/* Greedy ids from mm-run for the same prompt and budget, on the service's model root. */
static int mm_run_ids(const char *mm_run, const char *prompt, int max_new, int32_t *ids) {
    char cmd[8192], root[4096];
    if (svc_model) snprintf(root, sizeof root, "%s", svc_model);
    else snprintf(root, sizeof root, "%s/tiny", getenv("MM_ASSETS_DIR"));
    snprintf(cmd, sizeof cmd, "'%s' --model '%s' --prompt '%s' --max-tokens %d --ids --threads 1 2>/dev/null", mm_run,
             root, prompt, max_new);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    int n = 0;
    while (n < 4096 && fscanf(p, "%d", &ids[n]) == 1) n++;
    pclose(p);
    return n;
}

/* The timeline (trace_file) of a run of n requests, each of which produced tokens: every
 * request's events in order, and steps whose round trip holds their compute time. */
static void check_trace(const char *path, int n_requests) {
    FILE *f = fopen(path, "r");
    EXPECT(f, "trace %s: not written", path);
    if (!f) return;
    static const char *const EVENTS[] = {"arrive", "admitted", "scheduled", "first", "done"};
    int count[5] = {0}, steps = 0, bad_steps = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        double t, sent, busy;
        int rows, seqs, decodes;
        unsigned long long id;
        if (sscanf(line, "{\"t\":%lf,\"ev\":\"step\",\"id\":%llu,\"sent\":%lf,\"busy\":%lf,\"seqs\":%d,\"rows\":%d,"
                         "\"decodes\":%d}", &t, &id, &sent, &busy, &seqs, &rows, &decodes) == 7) {
            steps++;
            bad_steps += !(sent <= t && busy > 0 && busy <= t - sent + 1 && rows >= seqs && seqs >= decodes && seqs > 0);
            continue;
        }
        for (int k = 0; k < 5; k++) {
            char want[64];
            snprintf(want, sizeof want, "\"ev\":\"%s\"", EVENTS[k]);
            count[k] += strstr(line, want) != NULL;
        }
    }
    fclose(f);
    for (int k = 0; k < 5; k++) EXPECT(count[k] == n_requests, "trace: %d \"%s\" events, %d requests", count[k], EVENTS[k], n_requests);
    EXPECT(steps >= n_requests && bad_steps == 0, "trace: %d steps, %d inconsistent", steps, bad_steps);
    unlink(path);
}

static int test_greedy(int P, const char *coord, const char *stage, const char *mm_run) {
    mm_service s;
    char extra[256], trace[128];
    snprintf(trace, sizeof trace, "/tmp/mm-test-trace-%d-%d.jsonl", (int)getpid(), P);
    snprintf(extra, sizeof extra, "\"max_batch_tokens\": 16, \"trace_file\": \"%s\"", trace);
    EXPECT(svc_start(&s, coord, stage, P, extra) == 0, "start with %d stages", P);
    for (int i = 0; i < N_PROMPTS && s.cl; i++) {
        int32_t want[4096];
        int n = mm_run_ids(mm_run, PROMPTS[i], 40, want);
        static gen_result g, gs;
        svc_generate(&s, PROMPTS[i], 40, 0, 30, &g);
        svc_generate(&s, PROMPTS[i], 40, 1, 30, &gs);
        EXPECT(g.code == 0 && gs.code == 0, "prompt %d: %s / %s", i, g.msg, gs.msg);
        EXPECT(n > 0 && g.n_ids == n && !memcmp(g.ids, want, sizeof(int32_t) * (size_t)n),
               "P=%d prompt %d: service ids (%d) differ from mm-run (%d)", P, i, g.n_ids, n);
        EXPECT(gs.n_ids == n && !memcmp(gs.ids, want, sizeof(int32_t) * (size_t)n) && !strcmp(g.text, gs.text),
               "P=%d prompt %d: stream differs from mm-run / unary", P, i);
    }
    Metamorph__V1__ModelInfo *m = svc_info(&s);
    EXPECT(m && (int)m->n_stages == P && m->kv_blocks_used == 0, "info: %d stages, %d blocks used",
           m ? (int)m->n_stages : -1, m ? m->kv_blocks_used : -1);
    if (m) metamorph__v1__model_info__free_unpacked(m, NULL);
    int st = svc_stop(&s);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "clean stop on SIGTERM (status %d)", st);
    check_trace(trace, 2 * N_PROMPTS);
    return 0;
}

/* test_greedy on a copy of the tiny model root whose llm/ is converted by mm-quantize
 * (vision/ and decoder/ linked): the stages load q8 weights, the pools the rest. */
static int test_greedy_q8(int P, const char *coord, const char *stage, const char *mm_run, const char *quantize) {
    char root[] = "/tmp/mm-q8-root-XXXXXX", cmd[8192];
    const char *assets = getenv("MM_ASSETS_DIR");
    EXPECT(mkdtemp(root) != NULL, "mkdtemp");
    snprintf(cmd, sizeof cmd, "cp '%s/tiny/metamorph.json' '%s/' && ln -s '%s/tiny/vision' '%s/vision' && "
             "ln -s '%s/tiny/decoder' '%s/decoder' && '%s' '%s/tiny/llm' '%s/llm' 2>/dev/null",
             assets, root, assets, root, assets, root, quantize, assets, root);
    EXPECT(system(cmd) == 0, "q8 model root: %s", cmd);
    svc_model = root;
    test_greedy(P, coord, stage, mm_run);
    svc_model = NULL;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    EXPECT(system(cmd) == 0, "%s", cmd);
    return 0;
}

/* ---------------------------------------------------------------- prefix caching */

/* A shared instruction of ~200 tokens of the tiny vocabulary: spans many 16-token
 * blocks, so questions after it hit mid-prompt (the instruction rarely ends on a block
 * boundary) and a re-sent conversation hits up to its last block. */
static const char *INSTR =
    "You are a careful assistant. Read the question below and answer it in plain words, one short paragraph, "
    "without lists, without code, and without repeating the question. If the question is about a picture, say "
    "what is in it first, then the colours, then anything unusual. If you do not know, say so. Keep to facts "
    "that the question gives you and do not invent names, numbers or places. Write for a reader who is busy. "
    "Question: ";
static const char *QUESTIONS[] = {"What is the sea?", "Why do mountains have snow on top?", "Tell me about pipelines",
                                  "What is 2 + 2?"};
#define N_QUESTIONS 4
#define PREFIX_N_CASES (2 * N_QUESTIONS + 3 + N_QUESTIONS)
#define PREFIX_MAX_NEW 24

typedef struct {
    char text[8][1024];
    svc_msg msgs[8];
    int n_msgs;
    float temperature;
    uint64_t seed;
} prefix_case;

static prefix_case prefix_cases[PREFIX_N_CASES];

/* Cases: each question greedy and sampled (seeded), a three-turn chat re-sent as it
 * grows, and the questions again (run concurrently). */
static void prefix_cases_make(void) {
    int c = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int q = 0; q < N_QUESTIONS; q++, c++) {
            prefix_case *k = &prefix_cases[c];
            snprintf(k->text[0], sizeof k->text[0], "%s%s", INSTR, QUESTIONS[q]);
            k->msgs[0] = (svc_msg){"user", k->text[0]};
            k->n_msgs = 1, k->temperature = pass ? 0.9f : 0, k->seed = 1000 + (uint64_t)q;
        }
    static const char *turns[] = {"What is the sea?", "It is a large body of salt water.", "Why is it salty?",
                                  "Rivers carry salt from rocks.", "And why is it blue?"};
    for (int t = 0; t < 3; t++, c++) {
        prefix_case *k = &prefix_cases[c];
        snprintf(k->text[0], sizeof k->text[0], "%s%s", INSTR, turns[0]);
        k->msgs[0] = (svc_msg){"user", k->text[0]};
        for (int i = 1; i <= 2 * t; i++) k->msgs[i] = (svc_msg){i % 2 ? "assistant" : "user", turns[i]};
        k->n_msgs = 1 + 2 * t, k->temperature = 0, k->seed = 0;
    }
    /* the messages of a copy still point at the texts of the case it copies */
    for (int q = 0; q < N_QUESTIONS; q++, c++) prefix_cases[c] = prefix_cases[q + (q % 2) * N_QUESTIONS];
}

typedef struct {
    mm_service *s;
    int c;
    gen_result *r;
} prefix_arg;

static void *prefix_main(void *p) {
    prefix_arg *a = p;
    const prefix_case *k = &prefix_cases[a->c];
    svc_chat(a->s, k->msgs, k->n_msgs, k->temperature, k->seed, PREFIX_MAX_NEW, a->c % 2, 60, a->r);
    return NULL;
}

/* Runs every case on a fresh service with the cache on or off: the first ones one
 * after another, the last N_QUESTIONS at once. */
static int prefix_run(int P, const char *coord, const char *stage, int cache, gen_result *out) {
    mm_service s;
    char extra[256];
    /* 32 blocks (512 tokens): the cases publish ~50 distinct blocks, so some are evicted;
     * the last four at once hold the shared instruction blocks together */
    snprintf(extra, sizeof extra, "\"kv_blocks\": 32, \"max_batch_tokens\": 48, \"prefix_cache\": %d", cache);
    EXPECT(svc_start(&s, coord, stage, P, extra) == 0, "start with %d stages, cache %d", P, cache);
    if (!s.cl) return -1;
    int first_conc = PREFIX_N_CASES - N_QUESTIONS;
    for (int c = 0; c < first_conc; c++) {
        prefix_arg a = {&s, c, &out[c]};
        prefix_main(&a);
    }
    pthread_t th[N_QUESTIONS];
    prefix_arg args[N_QUESTIONS];
    for (int i = 0; i < N_QUESTIONS; i++) {
        args[i] = (prefix_arg){&s, first_conc + i, &out[first_conc + i]};
        pthread_create(&th[i], NULL, prefix_main, &args[i]);
    }
    for (int i = 0; i < N_QUESTIONS; i++) pthread_join(th[i], NULL);
    for (int c = 0; c < PREFIX_N_CASES; c++) {
        EXPECT(out[c].code == 0, "cache %d case %d: %s", cache, c, out[c].msg);
        /* usage.cached_tokens: whole blocks, never the last prompt row, none with the cache off */
        EXPECT(out[c].cached_tokens % 16 == 0 && out[c].cached_tokens < out[c].prompt_tokens &&
                   (cache || out[c].cached_tokens == 0),
               "cache %d case %d: %d of %d prompt tokens cached", cache, c, out[c].cached_tokens, out[c].prompt_tokens);
    }
    if (cache) /* the first request finds nothing; the same prompt again finds its prefix */
        EXPECT(out[0].cached_tokens == 0 && out[N_QUESTIONS].cached_tokens >= out[0].prompt_tokens - 16,
               "cached_tokens: first %d, the same prompt again %d of %d", out[0].cached_tokens,
               out[N_QUESTIONS].cached_tokens, out[N_QUESTIONS].prompt_tokens);
    double hits = svc_metric(&s, "metamorph_prefix_cache_hits_total");
    double queries = svc_metric(&s, "metamorph_prefix_cache_queries_total");
    double evictions = svc_metric(&s, "metamorph_prefix_cache_evictions_total");
    Metamorph__V1__ModelInfo *m = svc_info(&s);
    if (cache) {
        EXPECT(queries > 0 && hits > 0 && hits < queries && evictions > 0,
               "P=%d: metrics queries %g, hits %g, evictions %g", P, queries, hits, evictions);
        EXPECT(m && m->kv_blocks_cached > 0, "P=%d: info shows cached blocks (%d)", P, m ? m->kv_blocks_cached : -1);
    } else {
        EXPECT(queries == 0 && hits == 0 && evictions == 0 && m && m->kv_blocks_cached == 0,
               "cache off: nothing looked up (queries %g, cached %d)", queries, m ? m->kv_blocks_cached : -1);
    }
    EXPECT(m && m->kv_blocks_used == 0, "P=%d cache %d: %d blocks used after", P, cache, m ? m->kv_blocks_used : -1);
    if (m) metamorph__v1__model_info__free_unpacked(m, NULL);
    fprintf(stderr, "P=%d cache %d: queries %g, hits %g, evictions %g\n", P, cache, queries, hits, evictions);
    int st = svc_stop(&s);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "clean stop (status %d)", st);
    return 0;
}

static int test_prefix(int P, const char *coord, const char *stage, const char *mm_run) {
    prefix_cases_make();
    static gen_result off[PREFIX_N_CASES], on[PREFIX_N_CASES];
    if (prefix_run(P, coord, stage, 0, off) || prefix_run(P, coord, stage, 1, on)) return 0;
    for (int c = 0; c < PREFIX_N_CASES; c++)
        EXPECT(off[c].n_ids > 0 && off[c].n_ids == on[c].n_ids &&
                   !memcmp(off[c].ids, on[c].ids, sizeof(int32_t) * (size_t)off[c].n_ids) && !strcmp(off[c].text, on[c].text),
               "P=%d case %d (temperature %.1f): ids with the cache on differ from off", P, c,
               prefix_cases[c].temperature);
    for (int q = 0; q < N_QUESTIONS; q++) { /* an independent reference for the greedy ones */
        static int32_t want[4096], got[4096];
        int n = mm_run_ids(mm_run, prefix_cases[q].text[0], PREFIX_MAX_NEW, want), n_got = 0;
        for (int i = 0; i < on[q].n_ids; i++) /* mm-run --ids prints text ids only (the model may draw an image) */
            if (on[q].ids[i] >= 0) got[n_got++] = on[q].ids[i];
        EXPECT(n > 0 && n_got == n && !memcmp(got, want, sizeof(int32_t) * (size_t)n),
               "P=%d question %d: text ids (%d) differ from mm-run's (%d)", P, q, n_got, n);
    }
    return 0;
}

/* ---------------------------------------------------------------- concurrency */

#define N_CONC 32
typedef struct {
    mm_service *s;
    int i;
    gen_result *r;
} conc_arg;

static char conc_prompts[N_CONC][256];
static int conc_max_new(int i) { return 8 + (i * 7) % 40; }

static void *conc_main(void *p) {
    conc_arg *a = p;
    svc_generate(a->s, conc_prompts[a->i], conc_max_new(a->i), a->i % 2, 60, a->r);
    return NULL;
}

static int test_concurrent(const char *coord, const char *stage) {
    mm_service s;
    /* 48 blocks (768 tokens) for 32 sequences of up to ~110 tokens: preemption happens */
    EXPECT(svc_start(&s, coord, stage, 2, "\"kv_blocks\": 48, \"max_batch_tokens\": 64") == 0, "start");
    static gen_result solo[N_CONC], conc[N_CONC];
    for (int i = 0; i < N_CONC; i++) {
        int o = snprintf(conc_prompts[i], sizeof conc_prompts[i], "Request %d:", i);
        for (int w = 0; w < i % 9; w++) o += snprintf(conc_prompts[i] + o, sizeof conc_prompts[i] - (size_t)o, " %s", PROMPTS[w % N_PROMPTS]);
    }
    for (int i = 0; i < N_CONC; i++) svc_generate(&s, conc_prompts[i], conc_max_new(i), 0, 60, &solo[i]);
    pthread_t th[N_CONC];
    conc_arg args[N_CONC];
    double t0 = mm_now_s();
    for (int i = 0; i < N_CONC; i++) {
        args[i] = (conc_arg){&s, i, &conc[i]};
        pthread_create(&th[i], NULL, conc_main, &args[i]);
    }
    for (int i = 0; i < N_CONC; i++) pthread_join(th[i], NULL);
    fprintf(stderr, "32 concurrent requests: %.2f s\n", mm_now_s() - t0);
    for (int i = 0; i < N_CONC; i++) {
        EXPECT(solo[i].code == 0 && conc[i].code == 0, "request %d: %s / %s", i, solo[i].msg, conc[i].msg);
        EXPECT(solo[i].n_ids > 0 && solo[i].n_ids == conc[i].n_ids &&
                   !memcmp(solo[i].ids, conc[i].ids, sizeof(int32_t) * (size_t)solo[i].n_ids),
               "request %d: concurrent output differs from solo", i);
    }
    Metamorph__V1__ModelInfo *m = svc_info(&s);
    EXPECT(m && m->kv_blocks_used == 0 && m->requests_running == 0 && m->requests_waiting == 0,
           "after: %d blocks used, %d running, %d waiting", m ? m->kv_blocks_used : -1, m ? m->requests_running : -1,
           m ? m->requests_waiting : -1);
    if (m) metamorph__v1__model_info__free_unpacked(m, NULL);
    svc_stop(&s);
    return 0;
}

/* ---------------------------------------------------------------- errors */

typedef struct {
    const char *name;
    int code;
    const char *needle;  /* part of the expected message */
} expect_err;

static uint8_t *pack_req(Metamorph__V1__GenerateRequest *r, size_t *len) {
    *len = metamorph__v1__generate_request__get_packed_size(r);
    uint8_t *b = malloc(*len ? *len : 1);
    metamorph__v1__generate_request__pack(r, b);
    return b;
}

static void check_call(mm_service *s, const char *what, const char *method, const void *buf, size_t len, int code,
                       const char *needle) {
    char msg[512] = "";
    int got = svc_raw(s, method, buf, len, msg, sizeof msg);
    EXPECT(got == code && (!needle || strstr(msg, needle)), "%s: got %s \"%s\", want %s \"%s\"", what,
           mm_grpc_code_name(got), msg, mm_grpc_code_name(code), needle ? needle : "");
    EXPECT(svc_health(s) == 1, "%s: healthy after", what);
}

static void check_blocks_free(mm_service *s, const char *what) {
    double t0 = mm_now_s();
    int used = -1, running = -1;
    while (mm_now_s() - t0 < 5) {
        Metamorph__V1__ModelInfo *m = svc_info(s);
        if (m) used = m->kv_blocks_used, running = m->requests_running + m->requests_waiting;
        if (m) metamorph__v1__model_info__free_unpacked(m, NULL);
        if (used == 0 && running == 0) break;
        usleep(20000);
    }
    EXPECT(used == 0 && running == 0, "%s: %d blocks, %d requests left", what, used, running);
}

static int cancel_after_two(void *user, const uint8_t *d, size_t n) { return ++*(int *)user >= 2; }

typedef struct {
    mm_service *s;
    gen_result r;
} q_arg;

static void *queue_main(void *p) {
    q_arg *a = p;
    svc_generate(a->s, "Write a long story about the sea and the mountains, please.", 300, 0, 60, &a->r);
    return NULL;
}

static int test_errors(const char *coord, const char *stage) {
    mm_service s;
    EXPECT(svc_start(&s, coord, stage, 2,
                     "\"kv_blocks\": 32, \"max_receive_mb\": 1, \"max_images\": 1, \"max_stop_strings\": 2, "
                     "\"max_queue\": 2, \"max_batch_seqs\": 2") == 0,
           "start");
    const char *GEN = "/metamorph.v1.MetaMorph/Generate";
    check_call(&s, "malformed protobuf", GEN, "\xff\xff\xff\x01\x02", 5, 3, "malformed");
    check_call(&s, "unknown method", "/metamorph.v1.MetaMorph/Nope", "", 0, 12, "unknown method");
    check_call(&s, "empty conversation", GEN, "", 0, 3, "conversation is empty");

    Metamorph__V1__ContentPart part = METAMORPH__V1__CONTENT_PART__INIT, img = METAMORPH__V1__CONTENT_PART__INIT;
    part.kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT, part.text = (char *)"Hello";
    img.kind_case = METAMORPH__V1__CONTENT_PART__KIND_IMAGE;
    uint8_t png[8] = {0x89, 'P', 'N', 'G', 13, 10, 26, 10};
    img.image.data = png, img.image.len = sizeof png;
    Metamorph__V1__ContentPart *parts[3] = {&part, &img, &img};
    Metamorph__V1__ChatMessage m = METAMORPH__V1__CHAT_MESSAGE__INIT, *mp = &m;
    m.role = (char *)"user", m.n_parts = 1, m.parts = parts;
    Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
    Metamorph__V1__ImageParams ip = METAMORPH__V1__IMAGE_PARAMS__INIT;
    Metamorph__V1__GenerateRequest r = METAMORPH__V1__GENERATE_REQUEST__INIT;
    r.n_messages = 1, r.messages = &mp, r.sampling = &sp, r.image = &ip;
    size_t len;
    uint8_t *b;
#define CASE(what, setup, undo, code, needle)                                                      \
    do {                                                                                           \
        setup;                                                                                     \
        b = pack_req(&r, &len);                                                                    \
        check_call(&s, what, GEN, b, len, code, needle);                                           \
        free(b);                                                                                   \
        undo;                                                                                      \
    } while (0)
    CASE("unknown role", m.role = (char *)"robot", m.role = (char *)"user", 3, "unknown role");
    CASE("temperature", sp.temperature = -1, sp.temperature = 0, 3, "temperature");
    CASE("top_p", sp.top_p = 1.5f, sp.top_p = 0, 3, "top_p");
    CASE("top_k", sp.top_k = -3, sp.top_k = 0, 3, "top_k");
    CASE("max_new_tokens", sp.max_new_tokens = 1 << 30, sp.max_new_tokens = 0, 3, "max_new_tokens");
    char *stops[3] = {"a", "b", "c"};
    CASE("too many stop strings", (sp.stop = stops, sp.n_stop = 3), sp.n_stop = 0, 3, "stop strings");
    CASE("image steps", ip.steps = -1, ip.steps = 0, 3, "image.steps");
    CASE("too many images", m.n_parts = 3, m.n_parts = 1, 3, "images");
    CASE("undecodable image", m.n_parts = 2, m.n_parts = 1, 3, "parts[1].image: cannot use this image");
    char *longp = malloc(40000);
    for (int i = 0; i < 39999; i++) longp[i] = "abc de"[i % 6];
    longp[39999] = 0;
    CASE("prompt longer than the context", part.text = longp, part.text = (char *)"Hello", 3, "context");
    free(longp);
    uint8_t *big = calloc(1, 2 << 20);
    img.image.data = big, img.image.len = 2 << 20;
    CASE("oversized message", m.n_parts = 2, m.n_parts = 1, 8, NULL);
    free(big);

    /* 1 ms deadline: DEADLINE_EXCEEDED, and nothing left behind */
    static gen_result g;
    svc_generate(&s, "Write a long story about the sea and the mountains, please.", 500, 0, 0.001, &g);
    EXPECT(g.code == 4, "1 ms deadline: %s %s", mm_grpc_code_name(g.code), g.msg);
    check_blocks_free(&s, "after the deadline");
    /* a deadline that expires mid-generation */
    svc_generate(&s, "Write a long story about the sea and the mountains, please.", 400, 1, 0.05, &g);
    EXPECT(g.code == 4, "50 ms deadline: %s %s", mm_grpc_code_name(g.code), g.msg);
    check_blocks_free(&s, "after the mid-stream deadline");
    /* the client cancels a stream after two events */
    int seen = 0;
    b = pack_req(&r, &len);
    sp.max_new_tokens = 400;
    free(b);
    b = pack_req(&r, &len);
    int code = mm_client_call(s.cl, "/metamorph.v1.MetaMorph/GenerateStream", b, len, 30, cancel_after_two, &seen, NULL, 0);
    free(b);
    sp.max_new_tokens = 0;
    EXPECT(code == 1 && seen == 2, "client cancel: %s after %d events", mm_grpc_code_name(code), seen);
    check_blocks_free(&s, "after the client cancelled");
    /* queue full: 2 running + 2 waiting at most */
    enum { NQ = 10 };
    static q_arg qa[NQ];
    pthread_t th[NQ];
    for (int i = 0; i < NQ; i++) qa[i].s = &s, pthread_create(&th[i], NULL, queue_main, &qa[i]);
    int n_ok = 0, n_full = 0;
    for (int i = 0; i < NQ; i++) {
        pthread_join(th[i], NULL);
        n_ok += qa[i].r.code == 0;
        n_full += qa[i].r.code == 8 && strstr(qa[i].r.msg, "queue is full");
    }
    EXPECT(n_ok >= 2 && n_full >= 1 && n_ok + n_full == NQ, "queue: %d ok, %d RESOURCE_EXHAUSTED", n_ok, n_full);
    check_blocks_free(&s, "after the queue test");
    EXPECT(svc_health(&s) == 1, "healthy at the end");
    svc_stop(&s);
    return 0;
}

/* ---------------------------------------------------------------- a stage dies */

typedef struct {
    pid_t victim;
    int events;
} kill_arg;

static int kill_on_first(void *user, const uint8_t *d, size_t n) {
    kill_arg *k = user;
    if (k->events++ == 0) kill(k->victim, SIGKILL);
    return 0;
}

static int hydra_crashed(const mm_service *s) {
    char path[512], line[1024];
    snprintf(path, sizeof path, "%s/service.log", s->dir);
    FILE *f = fopen(path, "r");
    int hit = 0;
    while (f && fgets(line, sizeof line, f)) hit |= strstr(line, "unable to forward PMI response") != NULL;
    if (f) fclose(f);
    return hit;
}

static int test_kill(const char *coord, const char *stage) {
    mm_service s;
    EXPECT(svc_start(&s, coord, stage, 2, "\"fail_exit_ms\": 3000") == 0, "start");
    Metamorph__V1__ModelInfo *m = svc_info(&s);
    EXPECT(m && m->n_stages == 2, "info");
    if (!m) return 0;
    kill_arg k = {m->stages[1]->pid, 0};
    metamorph__v1__model_info__free_unpacked(m, NULL);
    Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
    sp.max_new_tokens = 2000;
    mm_generate_args a = {.prompt = "Tell me everything.", .sampling = &sp};
    size_t len = 0;
    uint8_t *b = NULL;
    EXPECT(mm_generate_request_pack(&a, &b, &len) == MM_OK, "pack: %s", mm_error_last());
    double t0 = mm_now_s();
    char err[512] = "";
    int code = mm_client_call(s.cl, "/metamorph.v1.MetaMorph/GenerateStream", b, len, 30, kill_on_first, &k, err, sizeof err);
    double dt = mm_now_s() - t0;
    free(b);
    EXPECT(code == 14 && dt < 5, "in-flight request: %s \"%s\" after %.2f s", mm_grpc_code_name(code), err, dt);
    int h = svc_health(&s);
    int st = -1;
    if (h != 0 && (hydra_crashed(&s) || (st = svc_wait_exit(&s, 1)) != -1)) {
        /* MPICH 4.0.2 hydra: even with -disable-auto-cleanup it sometimes tears the
         * whole job down when a rank dies (its proxy may die writing to the dead rank's
         * PMI socket); clients then see UNAVAILABLE from the connection instead of
         * NOT_SERVING. A hydra race, not the coordinator's; launch.sh restarts either way. */
        fprintf(stderr, "note: hydra took the whole job down after the kill; health = %d\n", h);
    } else {
        EXPECT(h == 0, "health NOT_SERVING after a stage died (got %d)", h);
        static gen_result g;
        svc_generate(&s, "Hi", 4, 0, 5, &g);
        EXPECT(g.code == 14, "new request: %s", mm_grpc_code_name(g.code));
    }
    if (st == -1) st = svc_wait_exit(&s, 15);
    EXPECT(st != -1 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0), "the job exits with failure (status %d)", st);
    svc_stop(&s);
    return 0;
}

static int test_python(const char *coord, const char *stage, const char *script) {
    mm_service s;
    const char *extra = getenv("MM_SERVICE_EXTRA"), *python = getenv("MM_PYTHON");
    EXPECT(svc_start(&s, coord, stage, 2, extra && extra[0] ? extra : "\"image_steps\": 5") == 0, "start");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s' %s '%s' '%s' %s %s", python && python[0] ? python : "/usr/bin/python3", script,
             s.target, getenv("MM_SOURCE_DIR"), s.dir, s.metrics, s.http);
    int rc = system(cmd);
    EXPECT(rc == 0, "python client: %s exited %d", script, rc);
    svc_stop(&s);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 5 && !strcmp(argv[1], "greedy")) test_greedy(atoi(argv[2]), argv[3], argv[4], argv[5]);
    else if (argc >= 7 && !strcmp(argv[1], "greedy_q8"))
        test_greedy_q8(atoi(argv[2]), argv[3], argv[4], argv[5], argv[6]);
    else if (argc >= 6 && !strcmp(argv[1], "prefix")) test_prefix(atoi(argv[2]), argv[3], argv[4], argv[5]);
    else if (argc >= 4 && !strcmp(argv[1], "concurrent")) test_concurrent(argv[2], argv[3]);
    else if (argc >= 4 && !strcmp(argv[1], "errors")) test_errors(argv[2], argv[3]);
    else if (argc >= 4 && !strcmp(argv[1], "kill")) test_kill(argv[2], argv[3]);
    else if (argc >= 5 && !strcmp(argv[1], "python")) test_python(argv[2], argv[3], argv[4]);
    else {
        fprintf(stderr, "usage: test_service greedy|greedy_q8|prefix|concurrent|errors|kill|python ...\n");
        return 2;
    }
    return mm_test_finish(argv[1]);
}
