/* mmctl batch: the command line of a dataset job and its runner. N worker threads
 * each take the next line, send it (one blocking call on the shared client, which is
 * thread-safe), retry overload with backoff, write the images and then append the
 * result record; the main thread draws the progress line. Files and their crash
 * safety are jsonl_results.c's and durable_file.c's; the request is batch_request.c's. */
#include "mmctl_batch.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/rng.h"
#include "tools/batch_input.h"
#include "tools/batch_progress.h"
#include "tools/batch_request.h"
#include "tools/batch_shard.h"
#include "tools/durable_file.h"
#include "tools/jsonl_results.h"

#define EXIT_USAGE 64
#define DEFAULT_CONCURRENCY 8
#define MAX_CONCURRENCY 1024
#define DEFAULT_MAX_ATTEMPTS 8
#define BACKOFF_BASE_MS 100.0 /* first retry after 50..100 ms, doubling */
#define BACKOFF_CAP_MS 5000.0
#define FILE_STEM_MAX 200     /* longer encoded ids are cut and hashed */
#define N_FAILURES_SHOWN 5

void mmctl_batch_usage(FILE *f) {
    fprintf(f,
            "  batch    --input FILE.jsonl --out DIR [--task caption|generate|chat] [--concurrency N]\n"
            "           [--resume] [--defaults JSON] [--max-attempts N]\n"
            "           [--max-tokens N]\n"
            "           --images DIR --prompt TEXT --out DIR [...]   caption every PNG/JPEG under DIR\n"
            "           (subdirectories too; id = the path relative to DIR; other files are\n"
            "           reported as skipped; no image at all is an error)\n"
            "           --shards 'data-{000..099}.tar' --prompt TEXT [...]   caption every PNG/JPEG\n"
            "           member of WebDataset-style tar shards (id = the sample key); each shard's\n"
            "           results go next to it, in data-000.results/ (same layout as --out DIR)\n"
            "           Each input line: {\"id\": \"...\", \"prompt\": \"...\", \"images\": [\"path\", ...],\n"
            "           \"task\", \"max_tokens\", \"temperature\", \"top_p\", \"top_k\", \"seed\", \"steps\",\n"
            "           \"guidance\", \"sampler\", \"image_seed\"} (only id and prompt required; relative\n"
            "           image paths are from the input file's directory; --defaults gives fields for\n"
            "           every line; --task the task of lines without one, default chat, caption\n"
            "           with --images; --max-tokens the max_tokens of lines without one). ids are\n"
            "           unique strings or integers.\n"
            "           Results: one JSON line per input line appended to DIR/results.jsonl:\n"
            "           {\"id\", \"line\", \"status\": \"ok\"|\"error\", \"error\", \"prompt\", \"source\" (the\n"
            "           image read, SHARD#MEMBER for a shard, null without one), \"text\", \"images\",\n"
            "           \"prompt_tokens\", \"cached_tokens\", \"completion_tokens\", \"ttft_ms\", \"total_ms\", \"attempts\"};\n"
            "           a line without a usable id (bad JSON, no id, duplicate) has \"id\": null.\n"
            "           Images: DIR/images/ID-K.png, ID with bytes other than A-Z a-z 0-9 . _ -\n"
            "           (and a leading .) written %%XX; over %d bytes cut, then ~ and a hash.\n"
            "           Crash-safe: images first (temporary, fsync, rename), then the line (one\n"
            "           write, fsync). --resume skips ids whose latest line is ok and retries the\n"
            "           others; without it an existing results.jsonl is an error. A completed job\n"
            "           rewrites results.jsonl with the latest line of each id, in input order.\n"
            "           RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED: retried with backoff\n"
            "           (--max-attempts, default %d); other errors are the line's result.\n"
            "           Ctrl-C stops at once (\"interrupted: rerun with --resume\"; finished lines are kept).\n"
            "           Exit 0 when every line is ok, 1 otherwise.\n",
            FILE_STEM_MAX, DEFAULT_MAX_ATTEMPTS);
}

typedef struct {
    mm_client *cl;
    double timeout_s;
    int max_attempts;
    const batch_input *in;
    const unsigned char *skip; /* [in->n] 1: ok in an earlier run */
    jsonl_results *results;
    char images_dir[4200];
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t changed;
    size_t next;        /* next line to take */
    int n_running;      /* workers not yet finished */
    int stop;           /* results cannot be written: take no more lines */
    char stop_msg[1024];
    batch_progress progress;
    size_t n_without_png; /* generated images that came without PNG bytes */
    char *failures[N_FAILURES_SHOWN];
    size_t n_failures;
} batch_job;

/* The file stem of an id: see the usage text. Injective: kept bytes never include '%'
 * or '~', and the cut form always ends in ~ + 16 hex digits. */
static void id_file_stem(const char *id, char *out, size_t cap) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)id; *p && n + 4 < cap; p++) {
        int keep = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' ||
                   *p == '-' || (*p == '.' && p != (const unsigned char *)id);
        if (keep) out[n++] = (char)*p;
        else out[n++] = '%', out[n++] = hex[*p >> 4], out[n++] = hex[*p & 15];
        if (n > FILE_STEM_MAX) break;
    }
    out[n] = 0;
    if (n <= FILE_STEM_MAX) return;
    uint64_t h = 1469598103934665603ull; /* FNV-1a 64 of the whole id */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) h = (h ^ *p) * 1099511628211ull;
    n = FILE_STEM_MAX - 20;
    if (n >= 2 && out[n - 1] == '%') n -= 1; /* never cut inside a %XX */
    else if (n >= 2 && out[n - 2] == '%') n -= 2;
    snprintf(out + n, cap - n, "~%016llx", (unsigned long long)h);
}

/* --- one line ------------------------------------------------------------ */

/* The record of a line, with every field (the schema never varies); error NULL: ok.
 * Takes images (NULL: none). NULL when out of memory. */
static json_t *record_make(const batch_item *it, const char *error, const char *text, json_t *images, int attempts,
                           const Metamorph__V1__GenerateResponse *r) {
    json_t *rec = json_object();
    int bad = !rec;
    bad |= json_object_set_new(rec, "id", it->id ? json_string(it->id) : json_null());
    bad |= json_object_set_new(rec, "line", json_integer(it->line));
    bad |= json_object_set_new(rec, "status", json_string(error ? "error" : "ok"));
    bad |= json_object_set_new(rec, "error", json_string(error ? error : ""));
    bad |= json_object_set_new(rec, "prompt", it->prompt ? json_string(it->prompt) : json_null());
    bad |= json_object_set_new(rec, "source", it->n_images ? json_string(it->image_paths[0]) : json_null());
    bad |= json_object_set_new(rec, "text", json_string(text ? text : ""));
    bad |= json_object_set_new(rec, "images", images ? images : json_array());
    bad |= json_object_set_new(rec, "prompt_tokens", json_integer(r && r->usage ? r->usage->prompt_tokens : 0));
    bad |= json_object_set_new(rec, "cached_tokens", json_integer(r && r->usage ? r->usage->cached_tokens : 0));
    bad |= json_object_set_new(rec, "completion_tokens", json_integer(r && r->usage ? r->usage->completion_tokens : 0));
    bad |= json_object_set_new(rec, "ttft_ms", json_real(r && r->timings ? round(r->timings->ttft_ms * 1e3) / 1e3 : 0));
    bad |= json_object_set_new(rec, "total_ms", json_real(r && r->timings ? round(r->timings->total_ms * 1e3) / 1e3 : 0));
    bad |= json_object_set_new(rec, "attempts", json_integer(attempts));
    if (!bad) return rec;
    json_decref(rec);
    return NULL;
}

static int retryable(int code) {
    return code == 8 /* RESOURCE_EXHAUSTED */ || code == 14 /* UNAVAILABLE */ || code == 4 /* DEADLINE_EXCEEDED */;
}

/* Exponential backoff with jitter: before attempt a+1, sleep in [d/2, d], d = min(cap, base 2^(a-1)). */
static void backoff_sleep(int attempt, uint64_t *rng) {
    double d = BACKOFF_BASE_MS;
    for (int i = 1; i < attempt && d < BACKOFF_CAP_MS; i++) d *= 2;
    if (d > BACKOFF_CAP_MS) d = BACKOFF_CAP_MS;
    double ms = d * (0.5 + 0.5 * (double)(mm_rng_next(rng) >> 11) / 9007199254740992.0);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms - 1000 * (double)(long)(ms / 1000)) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

static int on_response(void *user, const uint8_t *data, size_t len) {
    Metamorph__V1__GenerateResponse **r = user;
    if (*r) metamorph__v1__generate_response__free_unpacked(*r, NULL);
    *r = metamorph__v1__generate_response__unpack(NULL, len, data);
    return *r == NULL;
}

/* Writes the PNGs of r as images/STEM-K.png; returns the array of their names
 * relative to the output directory, or NULL with the error in err. */
static json_t *write_images(batch_job *job, const batch_item *it, const Metamorph__V1__GenerateResponse *r,
                            int *n_without_png, char *err, size_t cap) {
    json_t *names = json_array();
    if (!names) return snprintf(err, cap, "out of memory"), NULL;
    char stem[FILE_STEM_MAX + 32], name[FILE_STEM_MAX + 64], rel[FILE_STEM_MAX + 80];
    id_file_stem(it->id, stem, sizeof stem);
    for (size_t k = 0; k < r->n_images; k++) {
        if (!r->images[k]->png.len) {
            (*n_without_png)++;
            continue;
        }
        snprintf(name, sizeof name, "%s-%zu.png", stem, k);
        snprintf(rel, sizeof rel, "images/%s", name);
        if (durable_file_write_all(job->images_dir, name, r->images[k]->png.data, r->images[k]->png.len) != MM_OK ||
            json_array_append_new(names, json_string(rel))) {
            snprintf(err, cap, "cannot write image %zu: %s", k, mm_error_without_location(mm_error_last()));
            json_decref(names);
            return NULL;
        }
    }
    return names;
}

static int is_utf8(const char *s) {
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

/* Runs one line to its record (NULL only when out of memory). */
static json_t *run_line(batch_job *job, const batch_item *it, uint64_t *rng, int *n_without_png) {
    if (it->error) return record_make(it, it->error, NULL, NULL, 0, NULL);
    uint8_t *req;
    size_t len;
    if (batch_request_pack(it, &req, &len) != MM_OK)
        return record_make(it, mm_error_without_location(mm_error_last()), NULL, NULL, 0, NULL);
    Metamorph__V1__GenerateResponse *r = NULL;
    char msg[1024], err[1200];
    int code = 0, attempt = 0;
    while (++attempt <= job->max_attempts) {
        code = mm_client_call(job->cl, "/metamorph.v1.MetaMorph/Generate", req, len, job->timeout_s, on_response, &r, msg,
                              sizeof msg);
        if (code == 0 || !retryable(code) || attempt == job->max_attempts) break;
        backoff_sleep(attempt, rng);
    }
    free(req);
    json_t *images = NULL;
    if (code) snprintf(err, sizeof err, "%s: %s%s", mm_grpc_code_name(code), msg, retryable(code) ? " (gave up)" : "");
    else if (!r) snprintf(err, sizeof err, "the service sent no readable response");
    else if (!is_utf8(r->text)) snprintf(err, sizeof err, "the service sent text that is not UTF-8");
    else images = write_images(job, it, r, n_without_png, err, sizeof err);
    json_t *rec = record_make(it, images ? NULL : err, images ? r->text : NULL, images, attempt, images ? r : NULL);
    if (r) metamorph__v1__generate_response__free_unpacked(r, NULL);
    return rec;
}

/* --- the job ------------------------------------------------------------- */

static void note_failure(batch_job *job, const json_t *rec) {
    if (job->n_failures >= N_FAILURES_SHOWN) return;
    const json_t *id = json_object_get(rec, "id");
    char *s = NULL;
    if (asprintf(&s, "line %d%s%s%s: %s", (int)json_integer_value(json_object_get(rec, "line")),
                 json_is_string(id) ? " (id " : "", json_is_string(id) ? json_string_value(id) : "",
                 json_is_string(id) ? ")" : "",
                 json_string_value(json_object_get(rec, "error"))) >= 0)
        job->failures[job->n_failures++] = s;
}

static void *worker_main(void *arg) {
    batch_job *job = arg;
    uint64_t rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&rng;
    if (!rng) rng = 1;
    for (;;) {
        pthread_mutex_lock(&job->mu);
        while (job->next < job->in->n && job->skip[job->next]) job->next++;
        size_t i = job->next < job->in->n && !job->stop ? job->next++ : job->in->n;
        pthread_mutex_unlock(&job->mu);
        if (i == job->in->n) break;
        int n_without_png = 0;
        json_t *rec = run_line(job, &job->in->items[i], &rng, &n_without_png);
        mm_status s = rec ? jsonl_results_append(job->results, rec) : MM_ERROR(MM_ERR_NOMEM, "out of memory");
        pthread_mutex_lock(&job->mu);
        if (s != MM_OK) {
            if (!job->stop) snprintf(job->stop_msg, sizeof job->stop_msg, "%s", mm_error_last());
            job->stop = 1;
        } else if (!strcmp(json_string_value(json_object_get(rec, "status")), "ok")) {
            job->progress.ok++;
        } else {
            job->progress.failed++;
            note_failure(job, rec);
        }
        job->n_without_png += (size_t)n_without_png;
        pthread_cond_signal(&job->changed);
        pthread_mutex_unlock(&job->mu);
        json_decref(rec);
    }
    pthread_mutex_lock(&job->mu);
    job->n_running--;
    pthread_cond_signal(&job->changed);
    pthread_mutex_unlock(&job->mu);
    return NULL;
}

static volatile sig_atomic_t g_interrupted;
static void on_interrupt(int sig) { g_interrupted = sig; }

/* Ctrl-C: lines already recorded are durable and --resume skips them; the calls in
 * flight are abandoned (a worker blocked in one cannot be joined soon), so the process
 * ends the way the signal would have ended it (exit status 130 in a shell). */
static void end_interrupted(batch_job *job) {
    job->stop = 1;
    if (job->progress.tty) fputc('\n', job->progress.out);
    fprintf(stderr, "mmctl batch: interrupted: rerun with --resume (%zu lines done)\n", job->progress.ok + job->progress.failed);
    signal(g_interrupted, SIG_DFL);
    raise(g_interrupted);
}

/* Starts n workers and draws progress until they are all done. */
static mm_status run_workers(batch_job *job, int n) {
    pthread_t *threads = calloc((size_t)n, sizeof *threads);
    CHECK(CHECK_ALLOC(threads));
    int started = 0;
    mm_status s = MM_OK;
    pthread_mutex_lock(&job->mu);
    for (; started < n; started++) {
        int err = pthread_create(&threads[started], NULL, worker_main, job); /* returns the error, errno untouched */
        if (err) {
            s = MM_ERROR(MM_ERR_INTERNAL, "cannot start worker thread %d: %s", started, strerror(err));
            break;
        }
        job->n_running++;
    }
    while (job->n_running > 0) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 100 * 1000000L;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&job->changed, &job->mu, &until);
        if (g_interrupted) end_interrupted(job);
        batch_progress_draw(&job->progress, 0);
    }
    batch_progress_draw(&job->progress, 1);
    if (job->progress.tty) fputc('\n', job->progress.out);
    pthread_mutex_unlock(&job->mu);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    free(threads);
    return s;
}

static void print_summary(const batch_job *job, const char *out_dir) {
    const batch_progress *p = &job->progress;
    double t = batch_progress_elapsed(p);
    fprintf(stderr, "mmctl batch: %zu lines: %zu ok", p->total, p->skipped + p->ok);
    if (p->skipped) fprintf(stderr, " (%zu from earlier runs)", p->skipped);
    fprintf(stderr, ", %zu failed; %zu run in %.1f s (%.1f lines/s); results in %s/" JSONL_RESULTS_NAME "\n", p->failed,
            p->ok + p->failed, t, t > 0 ? (double)(p->ok + p->failed) / t : 0.0, out_dir);
    for (size_t i = 0; i < job->n_failures; i++) fprintf(stderr, "  failed: %s\n", job->failures[i]);
    if (p->failed > job->n_failures) fprintf(stderr, "  ... and %zu more (status \"error\" in the results)\n", p->failed - job->n_failures);
    if (job->n_without_png)
        fprintf(stderr, "mmctl batch: %zu generated images came without PNG bytes (no decoder pool serves them)\n",
                job->n_without_png);
}

/* Opens the results (and images/), marks the lines to skip, runs, compacts. */
static int run_job(mm_client *cl, double timeout_s, int concurrency, int max_attempts, int resume, const batch_input *in,
                   const char *out_dir) {
    jsonl_results results;
    mm_status s = jsonl_results_open(&results, out_dir, resume);
    if (s != MM_OK) {
        fprintf(stderr, "mmctl batch: %s\n", mm_error_last());
        return s == MM_ERR_INVALID ? EXIT_USAGE : 1;
    }
    if (results.n_torn_bytes || results.n_unreadable)
        fprintf(stderr, "mmctl batch: %s: dropped a torn last line of %zu bytes, ignored %zu unreadable lines\n",
                results.path, results.n_torn_bytes, results.n_unreadable);
    batch_job job = {.cl = cl, .timeout_s = timeout_s, .max_attempts = max_attempts, .in = in, .results = &results};
    unsigned char *skip = calloc(in->n ? in->n : 1, 1);
    char **keys = calloc(in->n ? in->n : 1, sizeof *keys);
    size_t n_skipped = 0;
    int rc = 1;
    snprintf(job.images_dir, sizeof job.images_dir, "%s/images", out_dir);
    if (!skip || !keys) {
        fprintf(stderr, "mmctl batch: out of memory\n");
        goto out;
    }
    if (mkdir(job.images_dir, 0755) && errno != EEXIST) {
        fprintf(stderr, "mmctl batch: cannot create %s: %s\n", job.images_dir, strerror(errno));
        goto out;
    }
    if (durable_fsync_dir(out_dir) != MM_OK || durable_remove_temporaries(job.images_dir) != MM_OK) {
        fprintf(stderr, "mmctl batch: %s\n", mm_error_last());
        goto out;
    }
    for (size_t i = 0; i < in->n; i++) {
        keys[i] = in->items[i].key;
        skip[i] = jsonl_results_latest(&results, keys[i]) == 1;
        n_skipped += skip[i];
    }
    job.skip = skip;
    pthread_mutex_init(&job.mu, NULL);
    pthread_cond_init(&job.changed, NULL);
    batch_progress_init(&job.progress, stderr, in->n, n_skipped);
    s = run_workers(&job, concurrency);
    if (s != MM_OK || job.stop) {
        fprintf(stderr, "mmctl batch: stopped: %s\n", job.stop ? job.stop_msg : mm_error_last());
    } else if (jsonl_results_compact(&results, keys, in->n) != MM_OK) {
        fprintf(stderr, "mmctl batch: %s\n", mm_error_last());
    } else {
        print_summary(&job, out_dir);
        rc = job.progress.failed ? 1 : 0;
    }
    for (size_t i = 0; i < job.n_failures; i++) free(job.failures[i]);
    pthread_cond_destroy(&job.changed);
    pthread_mutex_destroy(&job.mu);
out:
    free(skip), free(keys);
    jsonl_results_close(&results);
    return rc;
}

static int usage_error(const char *msg) {
    fprintf(stderr, "mmctl batch: %s (mmctl --help)\n", msg);
    return EXIT_USAGE;
}

/* Says what the loader left out; an input without a single line is an error. */
static int report_input(const batch_input *in, const char *what) {
    if (in->n_skipped) {
        fprintf(stderr, "mmctl batch: %s: skipped %zu files that are not PNG/JPEG:", what, in->n_skipped);
        for (size_t i = 0; i < in->n_skipped && i < BATCH_SKIPPED_SHOWN; i++)
            fprintf(stderr, "%s %s", i ? "," : "", in->skipped[i] ? in->skipped[i] : "?");
        fprintf(stderr, "%s\n", in->n_skipped > BATCH_SKIPPED_SHOWN ? ", ..." : "");
    }
    if (in->n) return 0;
    fprintf(stderr, "mmctl batch: %s: no input lines (no PNG/JPEG image, or an empty file)\n", what);
    return EXIT_USAGE;
}

/* Each shard of the pattern, one after another, with its results next to it. */
static int run_shards(mm_client *cl, double timeout_s, int concurrency, int max_attempts, int resume, const char *pattern,
                      const char *prompt, const batch_input_options *o) {
    char **shards;
    size_t n_shards;
    if (batch_shards_expand(pattern, &shards, &n_shards) != MM_OK) {
        fprintf(stderr, "mmctl batch: %s\n", mm_error_without_location(mm_error_last()));
        return EXIT_USAGE;
    }
    int rc = 0;
    for (size_t i = 0; i < n_shards; i++) {
        batch_input in;
        char out_dir[4200];
        batch_shard_results_dir(shards[i], out_dir, sizeof out_dir);
        int r = 1;
        if (batch_input_load_shard(shards[i], prompt, o, &in) != MM_OK) {
            fprintf(stderr, "mmctl batch: %s\n", mm_error_without_location(mm_error_last()));
        } else {
            fprintf(stderr, "mmctl batch: shard %zu of %zu: %s (%zu images) -> %s/\n", i + 1, n_shards, shards[i], in.n,
                    out_dir);
            r = report_input(&in, shards[i]);
            if (!r) r = run_job(cl, timeout_s, concurrency, max_attempts, resume, &in, out_dir);
            batch_input_free(&in);
        }
        if (r > rc) rc = r;
    }
    batch_shards_free(shards, n_shards);
    return rc;
}

int mmctl_batch(mm_client *cl, double timeout_s, int argc, char **argv) {
    static const struct option opts[] = {
        {"input", required_argument, 0, 'i'},       {"images", required_argument, 0, 'I'},
        {"prompt", required_argument, 0, 'p'},      {"out", required_argument, 0, 'o'},
        {"concurrency", required_argument, 0, 'c'}, {"task", required_argument, 0, 't'},
        {"resume", no_argument, 0, 'r'},            {"defaults", required_argument, 0, 'd'},
        {"max-attempts", required_argument, 0, 'a'}, {"max-tokens", required_argument, 0, 'm'},
        {"shards", required_argument, 0, 's'},      {0, 0, 0, 0}};
    const char *input = NULL, *images_dir = NULL, *prompt = NULL, *out_dir = NULL, *task = NULL, *defaults_text = NULL;
    const char *shards = NULL;
    int concurrency = DEFAULT_CONCURRENCY, max_attempts = DEFAULT_MAX_ATTEMPTS, resume = 0, max_tokens = -1, c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'i': input = optarg; break;
        case 'I': images_dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 'o': out_dir = optarg; break;
        case 'c': concurrency = atoi(optarg); break;
        case 't': task = optarg; break;
        case 'r': resume = 1; break;
        case 'd': defaults_text = optarg; break;
        case 'a': max_attempts = atoi(optarg); break;
        case 'm':
            max_tokens = (int)strtol(optarg, &end, 10);
            if (end == optarg || *end || max_tokens < 1) return usage_error("--max-tokens must be an integer >= 1");
            break;
        case 's': shards = optarg; break;
        default: return usage_error("unknown option");
        }
    }
    if (optind < argc) return usage_error("unexpected argument");
    if (!!input + !!images_dir + !!shards != 1)
        return usage_error("give exactly one of --input FILE.jsonl, --images DIR and --shards PATTERN");
    if (!out_dir && !shards) return usage_error("--out DIR is required");
    if (out_dir && shards) return usage_error("--shards writes each shard's results next to it: no --out");
    if ((images_dir || shards) && (!prompt || !prompt[0])) return usage_error("--images and --shards need --prompt TEXT");
    if (input && prompt) return usage_error("--prompt goes with --images (a JSONL line has its own)");
    if (concurrency < 1 || concurrency > MAX_CONCURRENCY) return usage_error("--concurrency must be in [1, 1024]");
    if (max_attempts < 1) return usage_error("--max-attempts must be >= 1");
    batch_input_options o = {.task = input ? BATCH_TASK_CHAT : BATCH_TASK_CAPTION};
    if (task && batch_task_parse(task, &o.task)) return usage_error("--task must be caption, generate or chat");
    json_t *prompt_json = prompt ? json_string(prompt) : NULL;
    if (prompt && !prompt_json) return usage_error("--prompt is not UTF-8");
    json_decref(prompt_json);
    json_t *defaults = defaults_text ? json_loads(defaults_text, 0, NULL) : json_object();
    if (!json_is_object(defaults) || json_object_get(defaults, "id")) {
        json_decref(defaults);
        return usage_error("--defaults must be a JSON object of line fields (without \"id\")");
    }
    if (max_tokens > 0 && !json_object_get(defaults, "max_tokens")) /* --defaults says it more precisely */
        json_object_set_new(defaults, "max_tokens", json_integer(max_tokens));
    o.defaults = defaults;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_interrupt; /* no SA_RESTART: the progress wait returns early */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int rc;
    if (shards) {
        rc = run_shards(cl, timeout_s, concurrency, max_attempts, resume, shards, prompt, &o);
    } else {
        batch_input in;
        mm_status s = input ? batch_input_load_jsonl(input, &o, &in) : batch_input_load_image_dir(images_dir, prompt, &o, &in);
        if (s != MM_OK) {
            fprintf(stderr, "mmctl batch: %s\n", mm_error_last());
            rc = EXIT_USAGE;
        } else {
            rc = report_input(&in, input ? input : images_dir);
            if (!rc) rc = run_job(cl, timeout_s, concurrency, max_attempts, resume, &in, out_dir);
            batch_input_free(&in);
        }
    }
    json_decref(defaults);
    return rc;
}
