/* See service.h. */
#include "service.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/free_port.h"
#include "common/http_client.h"
#include "proto/health.pb-c.h"
#include "tools/generate_request.h"

const char *svc_model = NULL;

/* The model root the service and its workers load: svc_model, else the embedded one. */
static const char *model_root(char *buf, size_t cap) {
    if (svc_model) return svc_model;
    snprintf(buf, cap, "%s/tiny", getenv("MM_ASSETS_DIR"));
    return buf;
}

pid_t svc_worker_start(mm_service *s, const char *pool) {
    int slot = 0;
    while (slot < SVC_MAX_WORKERS && s->workers[slot]) slot++;
    if (slot == SVC_MAX_WORKERS) return -1;
    int encode = !strcmp(pool, "encode");
    char bin[1200], model[1024], log[512], name[64];
    snprintf(bin, sizeof bin, "%s/worker/%s", s->bin_dir, encode ? "mm-encoder" : "mm-decoder");
    int k = s->n_worker_starts++;
    snprintf(name, sizeof name, "%s-test-%d", pool, k);
    snprintf(log, sizeof log, "%s/%s.log", s->dir, name);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stdout) || !freopen(log, "a", stderr)) _exit(127);
        execl(bin, bin, "--model", model_root(model, sizeof model), "--connect", encode ? s->encode_ep : s->decode_ep, "--threads", "1",
              "--name", name, "--heartbeat-ms", "100", (char *)NULL);
        _exit(127);
    }
    if (pid < 0) return -1;
    s->workers[slot] = pid;
    return pid;
}

void svc_worker_kill(mm_service *s, pid_t pid, int sig) {
    kill(pid, sig);
    if (sig != SIGKILL && sig != SIGTERM) return;
    waitpid(pid, NULL, 0);
    for (int i = 0; i < SVC_MAX_WORKERS; i++)
        if (s->workers[i] == pid) s->workers[i] = 0;
}

/* The last max_bytes of the file at path, to stderr (so CI's output shows why). */
static void print_tail(const char *path, long max_bytes) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fseek(f, 0, SEEK_END) == 0 && ftell(f) > max_bytes) fseek(f, -max_bytes, SEEK_END);
    else rewind(f);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stderr);
    fclose(f);
}

int svc_start(mm_service *s, const char *coordinator, const char *stage, int n_stages, const char *extra_json) {
    return svc_start_pools(s, coordinator, stage, n_stages, extra_json, 1, 1);
}

/* Has the coordinator logged its banner's "ready"? */
static int log_says_ready(const char *log) {
    FILE *f = fopen(log, "r");
    char line[4096];
    int ready = 0;
    while (f && !ready && fgets(line, sizeof line, f)) ready = strstr(line, "; ready") != NULL;
    if (f) fclose(f);
    return ready;
}

int svc_start_pools(mm_service *s, const char *coordinator, const char *stage, int n_stages, const char *extra_json,
                    int n_encoders, int n_decoders) {
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/mm-itest-XXXXXX");
    if (!mkdtemp(s->dir)) return -1;
    /* BUILD/coordinator/mm-coordinator -> BUILD */
    snprintf(s->bin_dir, sizeof s->bin_dir, "%s", coordinator);
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(s->bin_dir, '/');
        if (slash) *slash = 0;
    }
    int port[5]; /* gRPC, encode pool, decode pool, metrics, HTTP API */
    for (int i = 0; i < 5; i++)
        if ((port[i] = mm_free_port()) < 0) {
            fprintf(stderr, "no free loopback port\n");
            return -1;
        }
    snprintf(s->target, sizeof s->target, "127.0.0.1:%d", port[0]);
    snprintf(s->encode_ep, sizeof s->encode_ep, "tcp://127.0.0.1:%d", port[1]);
    snprintf(s->decode_ep, sizeof s->decode_ep, "tcp://127.0.0.1:%d", port[2]);
    snprintf(s->metrics, sizeof s->metrics, "127.0.0.1:%d", port[3]);
    snprintf(s->http, sizeof s->http, "127.0.0.1:%d", port[4]);
    char cfg[512], log[512], model[1024];
    snprintf(cfg, sizeof cfg, "%s/cfg.json", s->dir);
    snprintf(log, sizeof log, "%s/service.log", s->dir);
    FILE *f = fopen(cfg, "w");
    if (!f) return -1;
    fprintf(f,
            "{\"model\": \"%s\", \"listen\": \"%s\", \"threads\": 1, \"encode_bind\": \"%s\", "
            "\"decode_bind\": \"%s\", \"pool_heartbeat_ms\": 100, \"metrics_listen\": \"%s\", \"http_listen\": \"%s\"%s%s}\n",
            model_root(model, sizeof model), s->target, s->encode_ep, s->decode_ep, s->metrics, s->http, extra_json[0] ? ", " : "",
            extra_json);
    fclose(f);
    for (int i = 0; i < n_encoders; i++)
        if (svc_worker_start(s, "encode") < 0) return -1;
    for (int i = 0; i < n_decoders; i++)
        if (svc_worker_start(s, "decode") < 0) return -1;
    char np[16];
    snprintf(np, sizeof np, "%d", n_stages);
    s->pid = fork();
    if (s->pid == 0) {
        setpgid(0, 0);
        if (!freopen(log, "w", stdout) || !freopen(log, "a", stderr)) _exit(127);
        /* hydra: fork launcher on this host only */
        execlp("mpiexec", "mpiexec", "-launcher", "fork", "-hosts", "localhost", "-disable-auto-cleanup", "-n", "1",
               coordinator, cfg, ":", "-n", np, stage, cfg, (char *)NULL);
        _exit(127);
    }
    setpgid(s->pid, s->pid);
    if (mm_client_open(s->target, &s->cl) != MM_OK) return -1;
    /* a service the harness's client cannot talk to (test_security: an expired certificate) */
    int ready_by_log = getenv("MM_SVC_READY_BY_LOG") != NULL;
    double t0 = mm_now_s();
    while (mm_now_s() - t0 < 60) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            fprintf(stderr, "service exited during start; the end of %s:\n", log);
            print_tail(log, 4096);
            s->pid = 0;
            return -1;
        }
        if (ready_by_log ? log_says_ready(log) : svc_health(s) == 1) return 0;
        usleep(50000);
    }
    fprintf(stderr, "service not SERVING after 60 s (see %s)\n", log);
    return -1;
}

int svc_wait_exit(mm_service *s, double timeout_s) {
    double t0 = mm_now_s();
    while (s->pid > 0 && mm_now_s() - t0 < timeout_s) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return st;
        }
        usleep(20000);
    }
    return -1;
}

int svc_stop(mm_service *s) {
    int st = 0;
    for (int i = 0; i < SVC_MAX_WORKERS; i++)
        if (s->workers[i]) svc_worker_kill(s, s->workers[i], SIGKILL);
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        st = svc_wait_exit(s, 10);
        if (st == -1 && s->pid > 0) {
            fprintf(stderr, "service did not stop in 10 s: SIGKILL to its process group\n");
            kill(-s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            s->pid = 0;
        }
    }
    mm_client_close(s->cl);
    s->cl = NULL;
    return st;
}

static int on_health(void *user, const uint8_t *d, size_t n) {
    Grpc__Health__V1__HealthCheckResponse *r = grpc__health__v1__health_check_response__unpack(NULL, n, d);
    if (r) *(int *)user = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (r) grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    return 0;
}

int svc_health(mm_service *s) {
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    uint8_t buf[64];
    size_t len = grpc__health__v1__health_check_request__pack(&req, buf);
    int serving = 0;
    int code = mm_client_call(s->cl, "/grpc.health.v1.Health/Check", buf, len, 2, on_health, &serving, NULL, 0);
    return code ? -code : serving;
}

static int on_info(void *user, const uint8_t *d, size_t n) {
    *(Metamorph__V1__ModelInfo **)user = metamorph__v1__model_info__unpack(NULL, n, d);
    return 0;
}

Metamorph__V1__ModelInfo *svc_info(mm_service *s) {
    Metamorph__V1__ModelInfo *m = NULL;
    int code = mm_client_call(s->cl, "/metamorph.v1.MetaMorph/GetModelInfo", "", 0, 5, on_info, &m, NULL, 0);
    if (code && m) {
        metamorph__v1__model_info__free_unpacked(m, NULL);
        m = NULL;
    }
    return m;
}

static void add_ids(gen_result *g, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n && g->n_ids < 4096; i++) g->ids[g->n_ids++] = ids[i];
}

static void add_text(gen_result *g, const char *t) {
    size_t have = strlen(g->text);
    snprintf(g->text + have, sizeof g->text - have, "%s", t);
}

static int on_gen(void *user, const uint8_t *d, size_t n) {
    gen_result *g = user;
    Metamorph__V1__GenerateResponse *r = metamorph__v1__generate_response__unpack(NULL, n, d);
    if (!r) return 1;
    add_ids(g, r->token_ids, r->n_token_ids);
    add_text(g, r->text);
    if (r->usage) g->prompt_tokens = r->usage->prompt_tokens, g->cached_tokens = r->usage->cached_tokens;
    g->n_events++;
    metamorph__v1__generate_response__free_unpacked(r, NULL);
    return 0;
}

static int on_stream(void *user, const uint8_t *d, size_t n) {
    gen_result *g = user;
    Metamorph__V1__GenerateEvent *ev = metamorph__v1__generate_event__unpack(NULL, n, d);
    if (!ev) return 1;
    if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_DELTA) {
        add_ids(g, ev->delta->token_ids, ev->delta->n_token_ids);
        add_text(g, ev->delta->text);
    }
    if (ev->event_case == METAMORPH__V1__GENERATE_EVENT__EVENT_FINAL && ev->final->usage)
        g->prompt_tokens = ev->final->usage->prompt_tokens, g->cached_tokens = ev->final->usage->cached_tokens;
    g->n_events++;
    metamorph__v1__generate_event__free_unpacked(ev, NULL);
    return 0;
}

void svc_generate(mm_service *s, const char *prompt, int max_new, int stream, double timeout_s, gen_result *out) {
    svc_msg m = {"user", prompt};
    svc_chat(s, &m, 1, 0, 0, max_new, stream, timeout_s, out);
}

#define SVC_MAX_MSGS 16
void svc_chat(mm_service *s, const svc_msg *msgs, int n_msgs, float temperature, uint64_t seed, int max_new, int stream,
              double timeout_s, gen_result *out) {
    memset(out, 0, sizeof *out);
    if (n_msgs < 1 || n_msgs > SVC_MAX_MSGS) {
        out->code = -1;
        snprintf(out->msg, sizeof out->msg, "svc_chat: %d messages (1..%d)", n_msgs, SVC_MAX_MSGS);
        return;
    }
    Metamorph__V1__ContentPart part[SVC_MAX_MSGS], *pp[SVC_MAX_MSGS];
    Metamorph__V1__ChatMessage m[SVC_MAX_MSGS], *mp[SVC_MAX_MSGS];
    for (int i = 0; i < n_msgs; i++) {
        metamorph__v1__content_part__init(&part[i]);
        part[i].kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT;
        part[i].text = (char *)msgs[i].text;
        pp[i] = &part[i];
        metamorph__v1__chat_message__init(&m[i]);
        m[i].role = (char *)msgs[i].role, m[i].n_parts = 1, m[i].parts = &pp[i];
        mp[i] = &m[i];
    }
    Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
    sp.max_new_tokens = max_new;
    sp.temperature = temperature;
    sp.seed = seed;
    Metamorph__V1__GenerateRequest req = METAMORPH__V1__GENERATE_REQUEST__INIT;
    req.n_messages = (size_t)n_msgs, req.messages = mp, req.sampling = &sp;
    size_t len = metamorph__v1__generate_request__get_packed_size(&req);
    uint8_t *buf = malloc(len);
    metamorph__v1__generate_request__pack(&req, buf);
    out->code = mm_client_call(s->cl, stream ? "/metamorph.v1.MetaMorph/GenerateStream" : "/metamorph.v1.MetaMorph/Generate",
                               buf, len, timeout_s, stream ? on_stream : on_gen, out, out->msg, sizeof out->msg);
    free(buf);
}

int svc_raw(mm_service *s, const char *method, const void *req, size_t len, char *msg, size_t cap) {
    return mm_client_call(s->cl, method, req, len, 10, NULL, NULL, msg, cap);
}

double svc_metric(const mm_service *s, const char *series) {
    mm_http_reply r;
    double v = NAN;
    if (mm_http_request(s->metrics, "GET", "/metrics", 5, &r) == MM_OK && r.status == 200)
        v = mm_prometheus_sample(r.body, series);
    mm_http_reply_free(&r);
    return v;
}

int svc_wait_metric(const mm_service *s, const char *series, double want, double timeout_s) {
    for (double t0 = mm_now_s(); mm_now_s() - t0 < timeout_s; usleep(20000))
        if (svc_metric(s, series) == want) return 0;
    fprintf(stderr, "%s is %g, not %g, after %.0f s\n", series, svc_metric(s, series), want, timeout_s);
    return -1;
}

int svc_log_count(const mm_service *s, const char *name, const char *needle) {
    char path[600], line[4096];
    snprintf(path, sizeof path, "%s/%s", s->dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}
