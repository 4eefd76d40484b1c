/* See serve_load.h. */
#include "serve_load.h"

#include "serve_http.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *const serve_kind_name[SERVE_N_KINDS] = {"text", "understand", "generate"};

static const char *http_door; /* serve_load_use_http: NULL = gRPC */

void serve_load_use_http(const char *hostport) { http_door = hostport; }

typedef struct {
    mm_client *cl;
    serve_req *r;
    int n;
    double t0, timeout_s;
    atomic_int next;
} run_state;

double serve_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int on_event(void *user, const uint8_t *d, size_t n) {
    serve_req *r = user;
    Metamorph__V1__GenerateEvent *ev = metamorph__v1__generate_event__unpack(NULL, n, d);
    if (!ev) return 1;
    double t = serve_now();
    if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_DELTA && ev->delta->n_token_ids) {
        if (r->n_out == 0) r->first = t;
        else if (r->n_itl < r->cap_itl) r->itl[r->n_itl++] = (t - r->last) * 1e3;
        r->last = t;
        r->n_out += (int)ev->delta->n_token_ids;
    } else if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_READY && ev->image_ready->png.len) {
        r->n_images++;
    } else if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_FINAL && ev->final->usage) {
        r->n_in = ev->final->usage->prompt_tokens;
    }
    metamorph__v1__generate_event__free_unpacked(ev, NULL);
    return 0;
}

static const char *WORDS[] = {"the", "cat", "sat", "on", "a", "mat", "and", "looked", "at", "sea", "mountain", "river"};
#define N_WORDS (sizeof WORDS / sizeof *WORDS)

char *serve_prompt_words(int n_words, unsigned random_words, int i) {
    char *prompt = malloc((size_t)n_words * 10 + 1);
    if (!prompt) return NULL;
    size_t o = 0;
    uint64_t x = ((uint64_t)random_words << 32) ^ (uint64_t)i ^ 0x9e3779b97f4a7c15ull;
    prompt[0] = 0;
    for (int w = 0; w < n_words; w++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t k = random_words ? (size_t)(x >> 33) % N_WORDS : (size_t)(i + w * 7) % N_WORDS;
        o += (size_t)sprintf(prompt + o, "%s%s", w ? " " : "", WORDS[k]);
    }
    return prompt;
}

/* The request of r with its prompt packed into *buf; 0, or -1 without memory. */
#define MAX_HISTORY 31
static int pack(const serve_req *r, int i, const char *prompt, uint8_t **buf, size_t *len) {
    if (r->n_history < 0 || r->n_history > MAX_HISTORY) return -1;
    Metamorph__V1__ContentPart lead = METAMORPH__V1__CONTENT_PART__INIT, text = METAMORPH__V1__CONTENT_PART__INIT;
    Metamorph__V1__ContentPart image = METAMORPH__V1__CONTENT_PART__INIT, *parts[3];
    size_t n_parts = 0;
    if (r->lead) {
        lead.kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT, lead.text = (char *)r->lead;
        parts[n_parts++] = &lead;
    }
    if (r->kind == SERVE_UNDERSTAND && r->image) {
        image.kind_case = METAMORPH__V1__CONTENT_PART__KIND_IMAGE;
        image.image.data = r->image->png, image.image.len = r->image->len;
        parts[n_parts++] = &image;
    }
    text.kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT, text.text = (char *)prompt;
    parts[n_parts++] = &text;
    /* earlier turns (one text part each), then this one */
    Metamorph__V1__ContentPart hp[MAX_HISTORY], *hpp[MAX_HISTORY];
    Metamorph__V1__ChatMessage hm[MAX_HISTORY + 1], *mp[MAX_HISTORY + 1];
    for (int k = 0; k < r->n_history; k++) {
        metamorph__v1__content_part__init(&hp[k]);
        hp[k].kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT, hp[k].text = (char *)r->history[k];
        hpp[k] = &hp[k];
        metamorph__v1__chat_message__init(&hm[k]);
        hm[k].role = (char *)(k % 2 ? "assistant" : "user"), hm[k].n_parts = 1, hm[k].parts = &hpp[k];
        mp[k] = &hm[k];
    }
    Metamorph__V1__ChatMessage *m = &hm[r->n_history];
    metamorph__v1__chat_message__init(m);
    m->role = (char *)"user", m->n_parts = n_parts, m->parts = parts;
    mp[r->n_history] = m;
    Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
    sp.max_new_tokens = r->out_len;
    Metamorph__V1__ImageParams ip = METAMORPH__V1__IMAGE_PARAMS__INIT;
    ip.steps = r->steps, ip.seed = (uint64_t)i;
    Metamorph__V1__GenerateRequest req = METAMORPH__V1__GENERATE_REQUEST__INIT;
    req.n_messages = (size_t)r->n_history + 1, req.messages = mp, req.sampling = &sp;
    if (r->kind == SERVE_GENERATE) req.generate_image = 1, req.image = &ip;
    *len = metamorph__v1__generate_request__get_packed_size(&req);
    *buf = malloc(*len ? *len : 1);
    if (*buf) metamorph__v1__generate_request__pack(&req, *buf);
    return *buf ? 0 : -1;
}

static void *slot(void *arg) {
    run_state *st = arg;
    for (;;) {
        int i = atomic_fetch_add(&st->next, 1);
        if (i >= st->n) return NULL;
        serve_req *r = &st->r[i];
        double wait = st->t0 + r->arrival - serve_now();
        if (wait > 0) usleep((useconds_t)(wait * 1e6));
        uint8_t *buf = NULL;
        size_t len = 0;
        r->cap_itl = r->out_len + 1;
        r->itl = malloc((size_t)r->cap_itl * sizeof *r->itl);
        char *prompt = serve_prompt_words(r->in_len, r->random_words, i);
        r->start = serve_now();
        if (!r->itl || !prompt || (!http_door && pack(r, i, prompt, &buf, &len) != 0)) {
            fprintf(stderr, "serve: out of memory for request %d\n", i);
            r->code = -1, r->cap_itl = 0;
        } else if (http_door) {
            r->code = serve_http_call(http_door, r, prompt, i, st->timeout_s);
        } else {
            r->code = mm_client_call(st->cl, "/metamorph.v1.MetaMorph/GenerateStream", buf, len, st->timeout_s,
                                     on_event, r, NULL, 0);
        }
        r->end = serve_now();
        free(buf);
        free(prompt);
    }
}

double serve_load_run(mm_client *cl, serve_req *r, int n, int concurrency, double timeout_s) {
    run_state st = {cl, r, n, 0, timeout_s, 0};
    pthread_t *th = calloc((size_t)concurrency, sizeof *th);
    if (!th) {
        fprintf(stderr, "serve: out of memory for %d threads\n", concurrency);
        return -1;
    }
    st.t0 = serve_now();
    int started = 0;
    while (started < concurrency && pthread_create(&th[started], NULL, slot, &st) == 0) started++;
    if (started < concurrency) fprintf(stderr, "serve: only %d of %d client threads started\n", started, concurrency);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
    double last = st.t0;
    for (int i = 0; i < n; i++)
        if (r[i].end > last) last = r[i].end;
    return started ? last - st.t0 : -1;
}

int serve_req_ok(const serve_req *r) {
    return r->code == 0 && r->n_out > 0 && (r->kind != SERVE_GENERATE || r->n_images > 0);
}

void serve_reqs_free(serve_req *r, int n) {
    for (int i = 0; i < n; i++) {
        free(r[i].itl);
        r[i].itl = NULL, r[i].n_itl = r[i].cap_itl = 0;
    }
}

static int on_info(void *user, const uint8_t *d, size_t n) {
    *(Metamorph__V1__ModelInfo **)user = metamorph__v1__model_info__unpack(NULL, n, d);
    return 0;
}

Metamorph__V1__ModelInfo *serve_model_info(mm_client *cl) {
    Metamorph__V1__ModelInfo *m = NULL;
    int code = mm_client_call(cl, "/metamorph.v1.MetaMorph/GetModelInfo", "", 0, 10, on_info, &m, NULL, 0);
    if (code != 0 && m) {
        metamorph__v1__model_info__free_unpacked(m, NULL);
        m = NULL;
    }
    return m;
}
