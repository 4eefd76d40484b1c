/* The coordinator's metrics registry and HTTP endpoint, alone: exact exposition lines,
 * refused updates, one thread updating while another scrapes /metrics over a plain
 * socket many times (counters monotonic, histogram _count = +Inf bucket in every
 * scrape, exact totals at the end), the text parsed by prometheus_client (argv[1] is
 * check_prometheus_text.py), /healthz, /readyz following the serving flag, 404/405,
 * a taken port, and a restart on the same port after stop. */
#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "coordinator/metrics.h"
#include "common/http_client.h"
#include "coordinator/metrics_http.h"
#include "tests/testutil.h"

static const char *checker_script;

/* ---- HTTP through common/http_client ---- */

/* 0 and *r on a complete reply from 127.0.0.1:port, -1 (with a message on stderr) otherwise. */
static int http_request(int port, const char *method, const char *path, mm_http_reply *r) {
    char hostport[32];
    snprintf(hostport, sizeof hostport, "127.0.0.1:%d", port);
    if (mm_http_request(hostport, method, path, 10, r) == MM_OK) return 0;
    fprintf(stderr, "%s\n", mm_error_last());
    return -1;
}

/* Does the reply's head hold this header line (exact, case of the value kept)? */
static int has_header(const mm_http_reply *r, const char *line) {
    char want[256];
    snprintf(want, sizeof want, "\r\n%s\r\n", line);
    size_t head_len = (size_t)(r->body - r->raw);
    char *head = strndup(r->raw, head_len - 2); /* keep the final "\r\n" of the last header */
    int found = head && strcasestr(head, want) != NULL;
    free(head);
    return found;
}

static int has_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, line, n) && (p[n] == '\n' || !p[n])) return 1;
    return 0;
}

/* ---- prometheus_client's view of a text: {"types": {...}, "samples": {...}} or NULL ---- */

static json_t *parse_with_prometheus_client(const char *text) {
    char path[] = "/tmp/mm_test_metrics_XXXXXX";
    int fd = mkstemp(path);
    size_t len = strlen(text);
    if (fd < 0 || write(fd, text, len) != (ssize_t)len) {
        perror("temporary exposition file");
        if (fd >= 0) close(fd), unlink(path);
        return NULL;
    }
    close(fd);
    char *argv[] = {"/usr/bin/python3", (char *)checker_script, path, NULL};
    char *out = mm_test_run_capture(argv);
    unlink(path);
    json_error_t err;
    json_t *j = out ? json_loads(out, 0, &err) : NULL;
    if (out && !j) fprintf(stderr, "checker output is not JSON: %s\n", err.text);
    free(out);
    return j;
}

static double parsed_sample(const json_t *j, const char *key) {
    json_t *v = json_object_get(json_object_get(j, "samples"), key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* ---- the registry alone ---- */

static void test_render_exact(void) {
    mm_metrics *m = NULL;
    EXPECT(mm_metrics_create(3, &m) == MM_OK, "%s", mm_error_last());
    if (!m) return;
    EXPECT(mm_metrics_inc(m, MM_METRIC_REQUESTS_TOTAL, 3) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_metrics_set(m, MM_METRIC_KV_BLOCKS_CAPACITY, 0, 1024) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_metrics_set(m, MM_METRIC_STAGE_BUSY_SECONDS_TOTAL, 2, 0.1) == MM_OK, "%s", mm_error_last());
    EXPECT(mm_metrics_add(m, MM_METRIC_POOL_JOBS_IN_FLIGHT, MM_METRICS_POOL_DECODE, 5) == MM_OK, "%s",
           mm_error_last());
    EXPECT(mm_metrics_add(m, MM_METRIC_POOL_JOBS_IN_FLIGHT, MM_METRICS_POOL_DECODE, -2) == MM_OK, "%s",
           mm_error_last());
    const double ttft[] = {0.001, 0.0011, 0.3, 1000};
    for (int i = 0; i < 4; i++)
        EXPECT(mm_metrics_observe(m, MM_METRIC_TTFT_SECONDS, 0, ttft[i]) == MM_OK, "%s", mm_error_last());
    char *text = NULL;
    size_t len = 0;
    EXPECT(mm_metrics_render(m, &text, &len) == MM_OK, "%s", mm_error_last());
    if (!text) {
        mm_metrics_free(m);
        return;
    }
    EXPECT(len == strlen(text) && len > 0 && text[len - 1] == '\n', "len %zu", len);
    const char *lines[] = {
        "# HELP metamorph_requests_total Finished requests by final gRPC status.",
        "# TYPE metamorph_requests_total counter",
        "metamorph_requests_total{status=\"OK\"} 0",
        "metamorph_requests_total{status=\"INVALID_ARGUMENT\"} 1",
        "metamorph_requests_total{status=\"UNAUTHENTICATED\"} 0",
        "# TYPE metamorph_kv_blocks_capacity gauge",
        "metamorph_kv_blocks_capacity 1024",
        "metamorph_stage_busy_seconds_total{stage=\"1\"} 0",
        "metamorph_stage_busy_seconds_total{stage=\"3\"} 0.1",
        "metamorph_pool_jobs_in_flight{pool=\"encode\"} 0",
        "metamorph_pool_jobs_in_flight{pool=\"decode\"} 3",
        "# TYPE metamorph_ttft_seconds histogram",
        "metamorph_ttft_seconds_bucket{le=\"0.001\"} 1", /* le is inclusive */
        "metamorph_ttft_seconds_bucket{le=\"0.0025\"} 2",
        "metamorph_ttft_seconds_bucket{le=\"0.25\"} 2",
        "metamorph_ttft_seconds_bucket{le=\"0.5\"} 3",
        "metamorph_ttft_seconds_bucket{le=\"600\"} 3",
        "metamorph_ttft_seconds_bucket{le=\"+Inf\"} 4",
        "metamorph_ttft_seconds_count 4",
        "metamorph_tpot_seconds_count 0",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        EXPECT(has_line(text, lines[i]), "no line %s", lines[i]);
    EXPECT(!strstr(text, "stage=\"4\""), "a fourth stage in a 3-stage registry");
    double sum = ((ttft[0] + ttft[1]) + ttft[2]) + ttft[3]; /* the order of the observations */
    EXPECT(mm_prometheus_sample(text, "metamorph_ttft_seconds_sum") == sum, "sum %.17g, want %.17g",
           mm_prometheus_sample(text, "metamorph_ttft_seconds_sum"), sum);
    free(text);
    mm_metrics_free(m);
}

#define EXPECT_REFUSED(call, needle)                                                                                 \
    do {                                                                                                             \
        mm_status rc_ = (call);                                                                                      \
        EXPECT(rc_ == MM_ERR_INVALID && strstr(mm_error_last(), needle), "%s: %s", #call, mm_error_last());          \
    } while (0)

static void test_refused_updates(void) {
    mm_metrics *m = NULL;
    EXPECT_REFUSED(mm_metrics_create(0, &m), "stages");
    EXPECT_REFUSED(mm_metrics_create(65, &m), "stages");
    EXPECT(m == NULL, "registry set on failure");
    EXPECT(mm_metrics_create(2, &m) == MM_OK, "%s", mm_error_last());
    if (!m) return;
    EXPECT_REFUSED(mm_metrics_observe(m, MM_METRIC_REQUESTS_TOTAL, 0, 1), "metamorph_requests_total");
    EXPECT_REFUSED(mm_metrics_inc(m, MM_METRIC_TTFT_SECONDS, 0), "metamorph_ttft_seconds");
    EXPECT_REFUSED(mm_metrics_inc(m, MM_METRIC_REQUESTS_TOTAL, 17), "label index 17");
    EXPECT_REFUSED(mm_metrics_inc(m, MM_METRIC_REQUESTS_TOTAL, -1), "label index -1");
    EXPECT_REFUSED(mm_metrics_inc(m, MM_METRIC_QUEUE_DEPTH, 1), "label index 1");
    EXPECT_REFUSED(mm_metrics_set(m, MM_METRIC_STAGE_BUSY_SECONDS_TOTAL, 2, 1), "label index 2");
    EXPECT_REFUSED(mm_metrics_inc(m, MM_METRIC_COUNT, 0), "metric");
    EXPECT_REFUSED(mm_metrics_add(m, MM_METRIC_GENERATED_TOKENS_TOTAL, 0, -1), "metamorph_generated_tokens_total");
    EXPECT_REFUSED(mm_metrics_set(m, MM_METRIC_QUEUE_DEPTH, 0, NAN), "metamorph_queue_depth");
    EXPECT_REFUSED(mm_metrics_observe(m, MM_METRIC_TPOT_SECONDS, 0, INFINITY), "metamorph_tpot_seconds");
    EXPECT(mm_metrics_inc(NULL, MM_METRIC_REQUESTS_TOTAL, 0) == MM_OK, "NULL registry is metrics off");
    char *text = NULL;
    size_t len;
    EXPECT(mm_metrics_render(m, &text, &len) == MM_OK, "%s", mm_error_last());
    /* nothing refused changed anything */
    EXPECT(text && mm_prometheus_sample(text, "metamorph_generated_tokens_total") == 0, "tokens changed");
    EXPECT(text && mm_prometheus_sample(text, "metamorph_tpot_seconds_count") == 0, "tpot changed");
    EXPECT(text && mm_prometheus_sample(text, "metamorph_queue_depth") == 0, "queue depth changed");
    EXPECT(text && mm_prometheus_sample(text, "metamorph_requests_total{status=\"OK\"}") == 0, "requests changed");
    free(text);
    mm_metrics_free(m);
}

/* ---- one updater thread, one scraper: the schedule of iteration i ---- */

#define MIN_UPDATES 2000
#define SCRAPES 200

static double ttft_of(long i) { return 0.0004 * (double)(i % 3000); }

typedef struct {
    mm_metrics *m;
    atomic_int stop;
    long done;      /* iterations completed, read after join */
    int failures;   /* updates that did not return MM_OK */
} updater;

static void *run_updater(void *arg) {
    updater *u = arg;
    long i = 0;
    for (; i < MIN_UPDATES || !atomic_load(&u->stop); i++) {
        mm_metrics *m = u->m;
        int bad = 0;
        bad |= mm_metrics_inc(m, MM_METRIC_REQUESTS_TOTAL, (int)(i % 17)) != MM_OK;
        bad |= mm_metrics_add(m, MM_METRIC_GENERATED_TOKENS_TOTAL, 0, 3) != MM_OK;
        if (i % 10 == 0) bad |= mm_metrics_inc(m, MM_METRIC_GENERATED_IMAGES_TOTAL, 0) != MM_OK;
        bad |= mm_metrics_observe(m, MM_METRIC_TTFT_SECONDS, 0, ttft_of(i)) != MM_OK;
        if (i % 100 == 0) bad |= mm_metrics_observe(m, MM_METRIC_REQUEST_DURATION_SECONDS, 0, 700) != MM_OK;
        bad |= mm_metrics_set(m, MM_METRIC_QUEUE_DEPTH, 0, (double)(i % 50)) != MM_OK;
        bad |= mm_metrics_add(m, MM_METRIC_POOL_JOBS_IN_FLIGHT, MM_METRICS_POOL_ENCODE, i % 2 ? -1 : 1) != MM_OK;
        bad |= mm_metrics_inc(m, MM_METRIC_POOL_REDISPATCHES_TOTAL, (int)(i % 2)) != MM_OK;
        bad |= mm_metrics_set(m, MM_METRIC_STAGE_BUSY_SECONDS_TOTAL, (int)(i % 3), 0.5 * (double)(i + 1)) != MM_OK;
        bad |= mm_metrics_inc(m, i % 4 ? MM_METRIC_EMBED_CACHE_HITS_TOTAL : MM_METRIC_EMBED_CACHE_MISSES_TOTAL, 0) !=
               MM_OK;
        u->failures += bad;
    }
    u->done = i;
    return NULL;
}

/* How many i in [0, n) have i % mod == rest. */
static double count_mod(long n, long mod, long rest) { return (double)(n / mod + (rest < n % mod)); }

/* Every total the schedule above leads to after n iterations, checked in the scraped
 * text (get: our line lookup) and in prometheus_client's parse (j). */
static void expect_totals(const char *text, const json_t *j, long n) {
    static const char *const CODES[] = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"};
    static const long CODE_NUMS[] = {0, 3, 8, 16};
    for (int c = 0; c < 4; c++) {
        char series[128], key[128];
        snprintf(series, sizeof series, "metamorph_requests_total{status=\"%s\"}", CODES[c]);
        snprintf(key, sizeof key, "metamorph_requests_total{status=%s}", CODES[c]);
        double want = count_mod(n, 17, CODE_NUMS[c]);
        EXPECT(mm_prometheus_sample(text, series) == want, "%s = %g, want %g", series, mm_prometheus_sample(text, series), want);
        EXPECT(parsed_sample(j, key) == want, "parsed %s = %g, want %g", key, parsed_sample(j, key), want);
    }
    struct {
        const char *series, *key;
        double want;
    } t[] = {
        {"metamorph_generated_tokens_total", NULL, 3.0 * (double)n},
        {"metamorph_generated_images_total", NULL, count_mod(n, 10, 0)},
        {"metamorph_queue_depth", NULL, (double)((n - 1) % 50)},
        {"metamorph_pool_jobs_in_flight{pool=\"encode\"}", "metamorph_pool_jobs_in_flight{pool=encode}",
         (double)(n % 2)},
        {"metamorph_pool_redispatches_total{pool=\"decode\"}", "metamorph_pool_redispatches_total{pool=decode}",
         count_mod(n, 2, 1)},
        {"metamorph_embed_cache_hits_total", NULL, (double)n - count_mod(n, 4, 0)},
        {"metamorph_embed_cache_misses_total", NULL, count_mod(n, 4, 0)},
        {"metamorph_ttft_seconds_count", NULL, (double)n},
        {"metamorph_ttft_seconds_bucket{le=\"+Inf\"}", "metamorph_ttft_seconds_bucket{le=+Inf}", (double)n},
        {"metamorph_request_duration_seconds_count", NULL, count_mod(n, 100, 0)},
        {"metamorph_request_duration_seconds_bucket{le=\"600\"}", "metamorph_request_duration_seconds_bucket{le=600}",
         0},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        const char *key = t[i].key ? t[i].key : t[i].series;
        EXPECT(mm_prometheus_sample(text, t[i].series) == t[i].want, "%s = %.17g, want %.17g", t[i].series,
               mm_prometheus_sample(text, t[i].series), t[i].want);
        EXPECT(parsed_sample(j, key) == t[i].want, "parsed %s = %.17g, want %.17g", key, parsed_sample(j, key),
               t[i].want);
    }
    /* buckets and sum recomputed from the schedule */
    double le_025 = 0, sum = 0;
    for (long i = 0; i < n; i++) le_025 += ttft_of(i) <= 0.25, sum += ttft_of(i);
    EXPECT(mm_prometheus_sample(text, "metamorph_ttft_seconds_bucket{le=\"0.25\"}") == le_025, "le 0.25: %g, want %g",
           mm_prometheus_sample(text, "metamorph_ttft_seconds_bucket{le=\"0.25\"}"), le_025);
    EXPECT(mm_prometheus_sample(text, "metamorph_ttft_seconds_sum") == sum, "sum %.17g, want %.17g",
           mm_prometheus_sample(text, "metamorph_ttft_seconds_sum"), sum);
    for (int k = 0; k < 3; k++) {
        char series[96];
        snprintf(series, sizeof series, "metamorph_stage_busy_seconds_total{stage=\"%d\"}", k + 1);
        long last = (n - 1) - ((n - 1 - k) % 3 + 3) % 3; /* the last i with i % 3 == k */
        double want = last >= 0 ? 0.5 * (double)(last + 1) : 0;
        EXPECT(mm_prometheus_sample(text, series) == want, "%s = %g, want %g", series, mm_prometheus_sample(text, series), want);
    }
    EXPECT(json_string_value(json_object_get(json_object_get(j, "types"), "metamorph_ttft_seconds")) &&
               !strcmp(json_string_value(json_object_get(json_object_get(j, "types"), "metamorph_ttft_seconds")),
                       "histogram"),
           "ttft is not a histogram for prometheus_client");
    EXPECT(json_object_size(json_object_get(j, "types")) == MM_METRIC_COUNT, "%zu families, want %d",
           json_object_size(json_object_get(j, "types")), MM_METRIC_COUNT);
}

static void test_scrape_while_updating(void) {
    mm_metrics *m = NULL;
    atomic_int serving = 0;
    mm_metrics_http *http = NULL;
    EXPECT(mm_metrics_create(3, &m) == MM_OK, "%s", mm_error_last());
    EXPECT(m && mm_metrics_http_start("127.0.0.1:0", m, &serving, NULL, &http) == MM_OK, "%s", mm_error_last());
    if (!http) {
        mm_metrics_free(m);
        return;
    }
    int port = mm_metrics_http_port(http);
    EXPECT(port > 0, "port %d", port);

    updater u = {.m = m};
    atomic_init(&u.stop, 0);
    pthread_t th;
    if (pthread_create(&th, NULL, run_updater, &u) != 0) {
        EXPECT(0, "pthread_create");
        mm_metrics_http_stop(http);
        mm_metrics_free(m);
        return;
    }
    double last_ok = 0, last_tokens = 0;
    int distinct = 0, bad_scrapes = 0;
    char *midway = NULL;
    for (int s = 0; s < SCRAPES; s++) {
        mm_http_reply r;
        if (http_request(port, "GET", "/metrics", &r) != 0) {
            bad_scrapes++;
            continue;
        }
        const char *t = r.body;
        double ok = mm_prometheus_sample(t, "metamorph_requests_total{status=\"OK\"}");
        double tokens = mm_prometheus_sample(t, "metamorph_generated_tokens_total");
        double count = mm_prometheus_sample(t, "metamorph_ttft_seconds_count");
        double inf = mm_prometheus_sample(t, "metamorph_ttft_seconds_bucket{le=\"+Inf\"}");
        int good = r.status == 200 && has_header(&r, "Content-Type: text/plain; version=0.0.4; charset=utf-8") &&
                   ok >= last_ok && tokens >= last_tokens && fmod(tokens, 3) == 0 && count == inf &&
                   mm_prometheus_sample(t, "metamorph_ttft_seconds_bucket{le=\"0.001\"}") <= inf;
        if (!good) {
            fprintf(stderr, "scrape %d: status %d ok %g (was %g) tokens %g (was %g) count %g +Inf %g\n", s, r.status,
                    ok, last_ok, tokens, last_tokens, count, inf);
            bad_scrapes++;
        }
        distinct += ok != last_ok;
        last_ok = ok, last_tokens = tokens;
        if (s == SCRAPES / 2) midway = strdup(t);
        mm_http_reply_free(&r);
    }
    atomic_store(&u.stop, 1);
    pthread_join(th, NULL);
    EXPECT(bad_scrapes == 0, "%d of %d scrapes wrong", bad_scrapes, SCRAPES);
    EXPECT(u.failures == 0, "%d updates failed", u.failures);
    EXPECT(distinct >= 2, "the scrapes saw %d distinct values: no overlap with the updates", distinct);
    fprintf(stderr, "%ld update rounds during %d scrapes (%d saw new counts)\n", u.done, SCRAPES, distinct);

    json_t *mid = midway ? parse_with_prometheus_client(midway) : NULL;
    EXPECT(mid != NULL, "prometheus_client refused a scrape taken during the updates");
    json_decref(mid);
    free(midway);

    mm_http_reply r;
    EXPECT(http_request(port, "GET", "/metrics", &r) == 0 && r.status == 200, "final scrape");
    if (r.raw) {
        json_t *j = parse_with_prometheus_client(r.body);
        EXPECT(j != NULL, "prometheus_client refused the final scrape");
        if (j) expect_totals(r.body, j, u.done);
        json_decref(j);
    }
    mm_http_reply_free(&r);
    mm_metrics_http_stop(http);
    mm_metrics_free(m);
}

/* ---- health, routing, ports ---- */

static void expect_reply(int port, const char *method, const char *path, int status, const char *body) {
    mm_http_reply r;
    int rc = http_request(port, method, path, &r);
    EXPECT(rc == 0 && r.status == status && r.body_len == strlen(body) && !memcmp(r.body, body, r.body_len),
           "%s %s: %d \"%s\", want %d \"%s\"", method, path, r.status, r.body ? r.body : "", status, body);
    mm_http_reply_free(&r);
}

static void test_health_and_routes(void) {
    mm_metrics *m = NULL;
    atomic_int serving = 0;
    mm_metrics_http *http = NULL, *second = NULL;
    EXPECT(mm_metrics_create(1, &m) == MM_OK, "%s", mm_error_last());
    EXPECT(m && mm_metrics_http_start("127.0.0.1:0", m, &serving, NULL, &http) == MM_OK, "%s", mm_error_last());
    if (!http) {
        mm_metrics_free(m);
        return;
    }
    int port = mm_metrics_http_port(http);
    expect_reply(port, "GET", "/healthz", 200, "ok\n");
    expect_reply(port, "GET", "/readyz", 503, "NOT_SERVING\n");
    atomic_store(&serving, 1);
    expect_reply(port, "GET", "/readyz", 200, "SERVING\n");
    atomic_store(&serving, 0);
    expect_reply(port, "GET", "/readyz", 503, "NOT_SERVING\n");
    expect_reply(port, "GET", "/healthz", 200, "ok\n");
    expect_reply(port, "GET", "/metricsx", 404, "not found\n");
    expect_reply(port, "GET", "/", 404, "not found\n");
    expect_reply(port, "POST", "/metrics", 405, "method not allowed\n");
    mm_http_reply r;
    EXPECT(http_request(port, "DELETE", "/readyz", &r) == 0 && r.status == 405 && has_header(&r, "Allow: GET"),
           "405 without Allow: GET");
    mm_http_reply_free(&r);

    char address[64];
    snprintf(address, sizeof address, "127.0.0.1:%d", port);
    EXPECT(mm_metrics_http_start(address, m, &serving, NULL, &second) == MM_ERR_IO && !second &&
               strstr(mm_error_last(), address) && strstr(mm_error_last(), "in use"),
           "second server on a taken port: %s", mm_error_last());
    mm_metrics_http_stop(http);
    /* stop closed the port: the same address binds again and serves */
    EXPECT(mm_metrics_http_start(address, m, &serving, NULL, &second) == MM_OK && second, "%s", mm_error_last());
    if (second) expect_reply(mm_metrics_http_port(second), "GET", "/healthz", 200, "ok\n");
    mm_metrics_http_stop(second);

    mm_metrics_http *off = (mm_metrics_http *)1;
    EXPECT(mm_metrics_http_start("", m, &serving, NULL, &off) == MM_OK && off == NULL, "\"\" is metrics off");
    mm_metrics_http_stop(NULL);
    EXPECT(mm_metrics_http_start("9464", m, &serving, NULL, &off) == MM_ERR_INVALID, "no colon: %s", mm_error_last());
    EXPECT(mm_metrics_http_start("127.0.0.1:http", m, &serving, NULL, &off) == MM_ERR_INVALID, "%s",
           mm_error_last());
    mm_metrics_free(m);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s check_prometheus_text.py\n", argv[0]);
        return 2;
    }
    checker_script = argv[1];
    test_render_exact();
    test_refused_updates();
    test_health_and_routes();
    test_scrape_while_updating();
    return mm_test_finish("test_metrics");
}
