/* Tests of mmctl batch (issue 8). The service tests start their own
 * `mpiexec mm-coordinator : mm-stage` job (svc_start) on the tiny model:
 *   test_batch results                     no service: results.jsonl and durable files (a torn
 *                                          last line cut at open, latest line wins, compaction
 *                                          order, no reuse without --resume, one job per DIR)
 *   test_batch run COORD STAGE MMCTL       a 200-line job (captions, chat, generations, 10 invalid
 *                                          lines) completes: one line per input line in input
 *                                          order, the right statuses and errors, every ok answer
 *                                          equal to the same request made directly (greedy), PNGs
 *                                          decodable; --resume of a finished job changes nothing;
 *                                          --images DIR captions a directory
 *   test_batch kill COORD STAGE MMCTL      the same job SIGKILLed at 5 random points and resumed:
 *                                          after every kill only the last line may be torn and every
 *                                          image an ok line names is readable; at the end every line
 *                                          exactly once, results equal to an uninterrupted run
 *   test_batch overflow COORD STAGE MMCTL  a queue of 1: RESOURCE_EXHAUSTED is retried (answers
 *                                          still equal), or given up after --max-attempts; a
 *                                          deadline too short gives DEADLINE_EXCEEDED after retries
 * Random kill points come from MM_TEST_SEED (default: the time), printed for replay. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/image.h"
#include "service.h"
#include "tests/testutil.h"
#include "tools/durable_file.h"
#include "tools/generate_request.h"
#include "tools/jsonl_results.h"

#define N_LINES 200
#define MAX_TOKENS 8
#define GEN_TOKENS 66 /* 64 visual tokens, then text */
#define GEN_STEPS 2

/* ------------------------------------------------------------ helpers */

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* The records of a results file, one per complete line; *torn: the file ends without '\n';
 * *bad: complete lines that are not JSON objects. */
static json_t *load_results(const char *path, int *torn, int *bad) {
    size_t n = 0;
    char *text = mm_test_read_file(path, &n);
    json_t *arr = json_array();
    *torn = 0, *bad = 0;
    if (!text) return arr;
    char *p = text;
    while (p < text + n) {
        char *nl = memchr(p, '\n', (size_t)(text + n - p));
        if (!nl) {
            *torn = 1;
            break;
        }
        json_t *rec = json_loadb(p, (size_t)(nl - p), 0, NULL);
        if (json_is_object(rec)) json_array_append_new(arr, rec);
        else (*bad)++, json_decref(rec);
        p = nl + 1;
    }
    free(text);
    return arr;
}

static const char *rec_str(const json_t *rec, const char *key) {
    const char *s = json_string_value(json_object_get(rec, key));
    return s ? s : "";
}

static int rec_ok(const json_t *rec) { return !strcmp(rec_str(rec, "status"), "ok"); }

/* Runs `mmctl --server target ARGS...` (args NULL-terminated, from "batch" or a global
 * option), stdout/stderr to log; returns the pid. */
static pid_t spawn_mmctl(const char *mmctl, const char *target, const char *log, const char *const *args) {
    const char *argv[32] = {mmctl, "--server", target};
    int n = 3;
    for (; args[n - 3] && n < 31; n++) argv[n] = args[n - 3];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "a", stdout) || !freopen(log, "a", stderr)) _exit(127);
        execv(mmctl, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* mmctl's exit code, or 128 + signal. */
static int wait_status(pid_t pid) {
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int run_mmctl(const char *mmctl, const char *target, const char *log, const char *const *args) {
    return wait_status(spawn_mmctl(mmctl, target, log, args));
}

/* -------------------------------------------------------- the 200-line job */

typedef enum { EXPECT_OK, EXPECT_LOCAL_ERROR, EXPECT_SERVICE_ERROR } expectation;

typedef struct {
    char id[64];          /* "" for a line without a usable id */
    int line;             /* 1-based */
    int task_generate;
    char prompt[128];
    char image[1024];     /* absolute path of its image, "" for none */
    int max_tokens;
    expectation expect;
    const char *error_part; /* for errors: a piece of the message */
} line_spec;

static const char *const test_images[] = {"rgb_37x23.png", "baseline_45x33.jpg", "palette4_33x29.png",
                                          "gray_50x31.png", "progressive_161x97.jpg", "rgba_40x40.png"};
#define N_TEST_IMAGES (int)(sizeof test_images / sizeof test_images[0])

/* Writes DIR/input.jsonl (and DIR/rel/example.png, DIR/not_an_image.png) and fills
 * specs[N_LINES]. Invalid lines sit among the others. */
static int write_job(const char *dir, line_spec *specs) {
    char path[1024], example[1024], cmd[3000];
    snprintf(example, sizeof example, "%s/images/example.png", getenv("MM_ASSETS_DIR"));
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/rel' && cp '%s' '%s/rel/example.png'", dir, example, dir);
    if (system(cmd)) return -1;
    snprintf(path, sizeof path, "%s/not_an_image.png", dir);
    if (write_text(path, "this is text, not a PNG\n")) return -1;
    snprintf(path, sizeof path, "%s/input.jsonl", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    static const int invalid_at[] = {17, 43, 60, 77, 101, 130, 150, 170, 185, 199};
    int k_invalid = 0;
    for (int i = 0; i < N_LINES; i++) {
        line_spec *s = &specs[i];
        memset(s, 0, sizeof *s);
        s->line = i + 1;
        s->max_tokens = MAX_TOKENS;
        if (k_invalid < 10 && invalid_at[k_invalid] == i) {
            s->expect = EXPECT_LOCAL_ERROR;
            switch (k_invalid++) {
            case 0: fprintf(f, "{\"id\": \"broken\", \"prompt\": \n"), s->error_part = "invalid JSON"; break;
            case 1: fprintf(f, "not json at all\n"), s->error_part = "invalid JSON"; break;
            case 2: fprintf(f, "{\"prompt\": \"who am I?\"}\n"), s->error_part = "missing \"id\""; break;
            case 3: /* cap-0 and cap-1 are the first two lines */
            case 4: fprintf(f, "{\"id\": \"cap-%d\", \"prompt\": \"again\"}\n", k_invalid - 4), s->error_part = "duplicate id"; break;
            case 5:
            case 6:
                snprintf(s->id, sizeof s->id, "missing-%d", k_invalid);
                fprintf(f, "{\"id\": \"%s\", \"task\": \"caption\", \"prompt\": \"?\", \"images\": [\"no/such/file.png\"]}\n",
                        s->id);
                s->error_part = "cannot read image";
                break;
            case 7:
            case 8:
                snprintf(s->id, sizeof s->id, "notimage-%d", k_invalid);
                fprintf(f, "{\"id\": \"%s\", \"task\": \"caption\", \"prompt\": \"?\", \"images\": [\"not_an_image.png\"], "
                           "\"max_tokens\": 8}\n", s->id);
                s->expect = EXPECT_SERVICE_ERROR, s->error_part = "INVALID_ARGUMENT";
                break;
            default:
                snprintf(s->id, sizeof s->id, "noimage");
                fprintf(f, "{\"id\": \"noimage\", \"task\": \"caption\", \"prompt\": \"?\"}\n");
                s->error_part = "at least one image";
            }
            continue;
        }
        int kind = i % 10;
        if (kind < 5) { /* caption: a bundled image (absolute, file://, or relative to the input) */
            snprintf(s->id, sizeof s->id, "cap-%d", i);
            snprintf(s->prompt, sizeof s->prompt, i % 3 ? "Describe the image." : "What is in this picture?");
            const char *shown;
            if (i % 7 == 0) {
                snprintf(s->image, sizeof s->image, "%s/rel/example.png", dir);
                shown = "rel/example.png";
            } else {
                snprintf(s->image, sizeof s->image, "%s/tests/golden/vision/images/%s", getenv("MM_SOURCE_DIR"),
                         test_images[i % N_TEST_IMAGES]);
                shown = s->image;
            }
            fprintf(f, "{\"id\": \"%s\", \"task\": \"caption\", \"prompt\": \"%s\", \"images\": [\"%s%s\"], \"max_tokens\": %d}\n",
                    s->id, s->prompt, i % 4 == 1 ? "file://" : "", shown, s->max_tokens);
        } else if (kind < 8) { /* chat, one in three with an image; one with an integer id */
            snprintf(s->id, sizeof s->id, i == 5 ? "12345" : "chat-%d", i);
            snprintf(s->prompt, sizeof s->prompt, "Tell me about batch number %d", i);
            if (kind == 7) snprintf(s->image, sizeof s->image, "%s", example);
            fprintf(f, "{\"id\": %s%s%s, \"prompt\": \"%s\"%s%s%s, \"max_tokens\": %d}\n", i == 5 ? "" : "\"", s->id,
                    i == 5 ? "" : "\"", s->prompt, s->image[0] ? ", \"images\": [\"" : "", s->image,
                    s->image[0] ? "\"]" : "", s->max_tokens);
        } else { /* generate; ids with characters that must be escaped in file names */
            snprintf(s->id, sizeof s->id, kind == 8 ? "gen-%d" : "gen/%d \xc3\xbc", i);
            snprintf(s->prompt, sizeof s->prompt, "Draw a red cat number %d", i);
            s->task_generate = 1, s->max_tokens = GEN_TOKENS;
            fprintf(f, "{\"id\": \"%s\", \"task\": \"generate\", \"prompt\": \"%s\", \"max_tokens\": %d, \"steps\": %d, "
                       "\"image_seed\": %d}\n", s->id, s->prompt, s->max_tokens, GEN_STEPS, i);
        }
    }
    return fclose(f);
}

/* Key of a spec as in the results: its id, or its line when it has none. */
static int spec_matches(const line_spec *s, const json_t *rec) {
    const json_t *id = json_object_get(rec, "id");
    if (s->id[0]) return json_is_string(id) && !strcmp(json_string_value(id), s->id);
    return json_is_null(id) && json_integer_value(json_object_get(rec, "line")) == s->line;
}

/* Every image an ok record names: under DIR/images, decodable. Returns how many. */
static int check_images(const char *out_dir, const json_t *rec, const char *when) {
    const json_t *imgs = json_object_get(rec, "images");
    size_t k;
    const json_t *name;
    json_array_foreach(imgs, k, name) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", out_dir, json_string_value(name));
        size_t n = 0;
        char *png = mm_test_read_file(path, &n);
        mm_image img = {0};
        EXPECT(png && n > 8 && !memcmp(png, "\x89PNG\r\n\x1a\n", 8) && mm_image_decode(png, n, NULL, &img) == MM_OK,
               "%s: %s is not a readable PNG (%s)", when, path, png ? mm_error_last() : strerror(errno));
        EXPECT(!strncmp(json_string_value(name), "images/", 7), "%s: image name %s", when, json_string_value(name));
        mm_image_free(&img);
        free(png);
    }
    return (int)json_array_size(imgs);
}

/* The finished job: one record per line, in input order, with the expected statuses. */
static json_t *check_final(const char *out_dir, const line_spec *specs) {
    char path[1024];
    snprintf(path, sizeof path, "%s/results.jsonl", out_dir);
    int torn, bad;
    json_t *recs = load_results(path, &torn, &bad);
    EXPECT(!torn && !bad && json_array_size(recs) == N_LINES, "%s: %zu records (torn %d, bad %d), want %d", path,
           json_array_size(recs), torn, bad, N_LINES);
    for (int i = 0; i < N_LINES && (size_t)i < json_array_size(recs); i++) {
        const json_t *rec = json_array_get(recs, i);
        const line_spec *s = &specs[i];
        EXPECT(spec_matches(s, rec) && json_integer_value(json_object_get(rec, "line")) == s->line,
               "record %d is %s (line %d), want %s (line %d)", i, rec_str(rec, "id"),
               (int)json_integer_value(json_object_get(rec, "line")), s->id, s->line);
        if (s->expect == EXPECT_OK) {
            EXPECT(rec_ok(rec) && !rec_str(rec, "error")[0], "%s: %s", s->id, rec_str(rec, "error"));
        } else {
            EXPECT(!rec_ok(rec) && strstr(rec_str(rec, "error"), s->error_part), "line %d (%s): want an error with '%s', got %s: %s",
                   s->line, s->id, s->error_part, rec_str(rec, "status"), rec_str(rec, "error"));
        }
        check_images(out_dir, rec, "final");
    }
    char images[1100];
    snprintf(images, sizeof images, "%s/images", out_dir);
    DIR *d = opendir(images);
    struct dirent *e;
    while (d && (e = readdir(d))) EXPECT(strncmp(e->d_name, ".tmp-", 5), "a leftover temporary %s", e->d_name);
    if (d) closedir(d);
    return recs;
}

/* The request a line stands for, made directly: text, tokens and PNG count equal. */
typedef struct {
    char *text;
    int prompt_tokens, completion_tokens, n_png;
} direct_answer;

static int on_direct(void *user, const uint8_t *d, size_t n) {
    direct_answer *a = user;
    Metamorph__V1__GenerateResponse *r = metamorph__v1__generate_response__unpack(NULL, n, d);
    if (!r) return 1;
    a->text = strdup(r->text);
    a->prompt_tokens = r->usage ? r->usage->prompt_tokens : -1;
    a->completion_tokens = r->usage ? r->usage->completion_tokens : -1;
    for (size_t k = 0; k < r->n_images; k++) a->n_png += r->images[k]->png.len > 0;
    metamorph__v1__generate_response__free_unpacked(r, NULL);
    return 0;
}

static int direct_call(mm_service *svc, const line_spec *s, direct_answer *a) {
    memset(a, 0, sizeof *a);
    size_t image_len = 0;
    char *image = s->image[0] ? mm_test_read_file(s->image, &image_len) : NULL;
    const uint8_t *images[1] = {(const uint8_t *)image};
    Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
    sp.max_new_tokens = s->max_tokens;
    Metamorph__V1__ImageParams ip = METAMORPH__V1__IMAGE_PARAMS__INIT;
    ip.steps = s->task_generate ? GEN_STEPS : 0, ip.seed = s->task_generate ? (uint64_t)(s->line - 1) : 0;
    mm_generate_args g = {.prompt = s->prompt, .images = images, .image_lens = &image_len, .n_images = image ? 1 : 0,
                          .sampling = &sp, .image = &ip, .generate_image = s->task_generate};
    uint8_t *buf = NULL;
    size_t len = 0;
    EXPECT(mm_generate_request_pack(&g, &buf, &len) == MM_OK, "pack: %s", mm_error_last());
    char msg[512];
    int code = mm_client_call(svc->cl, "/metamorph.v1.MetaMorph/Generate", buf, len, 60, on_direct, a, msg, sizeof msg);
    free(buf), free(image);
    EXPECT(code == 0 && a->text, "direct %s: %s", s->id, msg);
    return code;
}

/* ok records equal the direct answers (greedy: deterministic). */
static void check_against_direct(mm_service *svc, const line_spec *specs, const json_t *recs) {
    int compared = 0, pngs = 0;
    for (int i = 0; i < N_LINES && (size_t)i < json_array_size(recs); i++) {
        const json_t *rec = json_array_get(recs, i);
        if (specs[i].expect != EXPECT_OK || !rec_ok(rec)) continue;
        direct_answer a;
        if (direct_call(svc, &specs[i], &a)) continue;
        EXPECT(!strcmp(a.text, rec_str(rec, "text")), "%s: batch text \"%s\" != direct \"%s\"", specs[i].id,
               rec_str(rec, "text"), a.text);
        EXPECT(a.prompt_tokens == json_integer_value(json_object_get(rec, "prompt_tokens")) &&
                   a.completion_tokens == json_integer_value(json_object_get(rec, "completion_tokens")),
               "%s: tokens %d + %d, direct %d + %d", specs[i].id, (int)json_integer_value(json_object_get(rec, "prompt_tokens")),
               (int)json_integer_value(json_object_get(rec, "completion_tokens")), a.prompt_tokens, a.completion_tokens);
        EXPECT((size_t)a.n_png == json_array_size(json_object_get(rec, "images")), "%s: %zu images, direct %d PNGs",
               specs[i].id, json_array_size(json_object_get(rec, "images")), a.n_png);
        pngs += a.n_png;
        compared++;
        free(a.text);
    }
    EXPECT(compared == N_LINES - 10, "compared %d ok lines with direct requests", compared);
    fprintf(stderr, "compared %d lines with direct requests (%d PNGs)\n", compared, pngs);
}

/* Same status, error, text and number of images, line by line. */
static void check_same_results(const json_t *a, const json_t *b, const char *what) {
    EXPECT(json_array_size(a) == json_array_size(b), "%s: %zu vs %zu records", what, json_array_size(a), json_array_size(b));
    for (size_t i = 0; i < json_array_size(a) && i < json_array_size(b); i++) {
        const json_t *x = json_array_get(a, i), *y = json_array_get(b, i);
        EXPECT(json_equal(json_object_get(x, "id"), json_object_get(y, "id")) && !strcmp(rec_str(x, "status"), rec_str(y, "status")) &&
                   !strcmp(rec_str(x, "error"), rec_str(y, "error")) && !strcmp(rec_str(x, "text"), rec_str(y, "text")) &&
                   json_equal(json_object_get(x, "images"), json_object_get(y, "images")),
               "%s: record %zu differs:\n  %s %s %s\n  %s %s %s", what, i, rec_str(x, "id"), rec_str(x, "status"),
               rec_str(x, "text"), rec_str(y, "id"), rec_str(y, "status"), rec_str(y, "text"));
    }
}

/* The service (config extra) and the job written into its directory (specs filled);
 * non-zero when either failed (nothing is left running then). */
static int start_service(mm_service *svc, int argc, char **argv, const char *extra, line_spec *specs) {
    if (argc < 5) {
        fprintf(stderr, "usage: test_batch MODE COORD STAGE MMCTL\n");
        return -1;
    }
    int rc = svc_start(svc, argv[2], argv[3], 1, extra);
    EXPECT(rc == 0, "service start");
    if (rc) {
        svc_stop(svc);
        return rc;
    }
    if (write_job(svc->dir, specs)) {
        EXPECT(0, "cannot write the job into %s (MM_ASSETS_DIR, MM_SOURCE_DIR set?)", svc->dir);
        svc_stop(svc);
        return -1;
    }
    return 0;
}

/* The uninterrupted job into dir/NAME; its records (checked) or NULL. */
static json_t *run_uninterrupted(mm_service *svc, const char *mmctl, const char *dir, const char *name,
                                 const line_spec *specs) {
    char input[1024], out[1024], log[1024];
    snprintf(input, sizeof input, "%s/input.jsonl", dir);
    snprintf(out, sizeof out, "%s/%s", dir, name);
    snprintf(log, sizeof log, "%s/%s.log", dir, name);
    const char *args[] = {"batch", "--input", input, "--out", out, "--concurrency", "8", NULL};
    int rc = run_mmctl(mmctl, svc->target, log, args);
    EXPECT(rc == 1, "%s: exit %d, want 1 (10 lines fail; see %s)", name, rc, log);
    return check_final(out, specs);
}

/* ------------------------------------------------------------------ modes */

static int test_run(int argc, char **argv) {
    mm_service svc;
    static line_spec specs[N_LINES];
    if (start_service(&svc, argc, argv, "", specs)) return 0;
    const char *mmctl = argv[4];
    json_t *recs = run_uninterrupted(&svc, mmctl, svc.dir, "out", specs);
    check_against_direct(&svc, specs, recs);

    /* --resume of a finished job: only the failed lines run again; nothing else changes */
    char input[1024], out[1024], log[1024], results[1100];
    snprintf(input, sizeof input, "%s/input.jsonl", svc.dir);
    snprintf(out, sizeof out, "%s/out", svc.dir);
    snprintf(log, sizeof log, "%s/resume.log", svc.dir);
    snprintf(results, sizeof results, "%s/results.jsonl", out);
    char *before = mm_test_read_file(results, NULL);
    const char *resume[] = {"batch", "--input", input, "--out", out, "--resume", NULL};
    EXPECT(run_mmctl(mmctl, svc.target, log, resume) == 1, "resume of a finished job exits 1 (failed lines)");
    char *after = mm_test_read_file(results, NULL);
    EXPECT(before && after && !strcmp(before, after), "resume of a finished job changed results.jsonl");
    /* without --resume an existing job is refused and left alone */
    const char *again[] = {"batch", "--input", input, "--out", out, NULL};
    EXPECT(run_mmctl(mmctl, svc.target, log, again) == 64, "an existing results.jsonl without --resume: exit 64");
    char *untouched = mm_test_read_file(results, NULL);
    EXPECT(after && untouched && !strcmp(after, untouched), "a refused job changed results.jsonl");
    free(before), free(after), free(untouched);

    /* --images DIR: one caption per PNG/JPEG (other files ignored), ids = file names */
    char img_dir[512], img_out[512], cmd[4096];
    snprintf(img_dir, sizeof img_dir, "%s/photos", svc.dir);
    snprintf(img_out, sizeof img_out, "%s/photos_out", svc.dir);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s/tests/golden/vision/images/%s' '%s/tests/golden/vision/images/%s' '%s' && echo x > '%s/notes.txt'",
             img_dir, getenv("MM_SOURCE_DIR"), test_images[0], getenv("MM_SOURCE_DIR"), test_images[1], img_dir, img_dir);
    EXPECT(system(cmd) == 0, "%s", cmd);
    const char *by_dir[] = {"batch", "--images", img_dir, "--prompt", "Describe the image.", "--out", img_out,
                            "--defaults", "{\"max_tokens\": 8}", NULL};
    EXPECT(run_mmctl(mmctl, svc.target, log, by_dir) == 0, "--images: exit 0 (see %s)", log);
    snprintf(results, sizeof results, "%s/results.jsonl", img_out);
    int torn, bad;
    json_t *caps = load_results(results, &torn, &bad);
    EXPECT(json_array_size(caps) == 2 && !torn && !bad, "--images: %zu records", json_array_size(caps));
    for (size_t k = 0; k < json_array_size(caps) && k < 2; k++) {
        const json_t *rec = json_array_get(caps, k);
        const char *name = test_images[strcmp(test_images[0], test_images[1]) < 0 ? k : 1 - k];
        line_spec s = {.max_tokens = MAX_TOKENS, .line = (int)k + 1};
        snprintf(s.id, sizeof s.id, "%s", name);
        snprintf(s.prompt, sizeof s.prompt, "Describe the image.");
        snprintf(s.image, sizeof s.image, "%s/%s", img_dir, name);
        direct_answer a;
        EXPECT(rec_ok(rec) && !strcmp(rec_str(rec, "id"), name), "--images record %zu: %s %s", k, rec_str(rec, "id"),
               rec_str(rec, "error"));
        if (!direct_call(&svc, &s, &a)) {
            EXPECT(!strcmp(a.text, rec_str(rec, "text")), "--images %s: \"%s\" != direct \"%s\"", name, rec_str(rec, "text"), a.text);
            free(a.text);
        }
    }
    json_decref(caps);
    json_decref(recs);
    svc_stop(&svc);
    return 0;
}

/* The number of '\n' in path (complete result lines). */
static size_t count_lines(const char *path) {
    size_t n = 0, count = 0;
    char *t = mm_test_read_file(path, &n);
    for (size_t i = 0; t && i < n; i++) count += t[i] == '\n';
    free(t);
    return count;
}

/* Distinct lines whose latest record is ok (a resumed run appends one record for each
 * of the others). */
static size_t count_ok_keys(const char *path) {
    int torn, bad;
    json_t *recs = load_results(path, &torn, &bad), *latest = json_object(), *rec;
    size_t i, n = 0;
    json_array_foreach(recs, i, rec) {
        char *key = jsonl_results_key(json_string_value(json_object_get(rec, "id")),
                                      (int)json_integer_value(json_object_get(rec, "line")));
        json_object_set_new(latest, key, json_boolean(rec_ok(rec)));
        free(key);
    }
    const char *k;
    json_object_foreach(latest, k, rec) n += json_is_true(rec);
    json_decref(latest), json_decref(recs);
    return n;
}

/* After a kill: every complete line is a record, only the last may be torn, and every
 * image of an ok record is readable. */
static void check_after_kill(const char *out_dir, int round) {
    char path[1100], when[64];
    snprintf(path, sizeof path, "%s/results.jsonl", out_dir);
    snprintf(when, sizeof when, "after kill %d", round);
    int torn, bad;
    json_t *recs = load_results(path, &torn, &bad);
    EXPECT(!bad, "%s: %d complete lines are not records", when, bad);
    int images = 0;
    size_t i;
    json_t *rec;
    json_array_foreach(recs, i, rec) if (rec_ok(rec)) images += check_images(out_dir, rec, when);
    fprintf(stderr, "%s: %zu lines%s, %d images\n", when, json_array_size(recs), torn ? " + a torn one" : "", images);
    json_decref(recs);
}

static int test_kill(int argc, char **argv) {
    mm_service svc;
    static line_spec specs[N_LINES];
    if (start_service(&svc, argc, argv, "", specs)) return 0;
    const char *mmctl = argv[4];
    unsigned seed = getenv("MM_TEST_SEED") ? (unsigned)atoi(getenv("MM_TEST_SEED")) : (unsigned)time(NULL);
    fprintf(stderr, "kill points from MM_TEST_SEED=%u\n", seed);
    srand(seed);
    json_t *want = run_uninterrupted(&svc, mmctl, svc.dir, "whole", specs);

    char input[1024], out[1024], log[1024], results[1100];
    snprintf(input, sizeof input, "%s/input.jsonl", svc.dir);
    snprintf(out, sizeof out, "%s/killed", svc.dir);
    snprintf(log, sizeof log, "%s/killed.log", svc.dir);
    snprintf(results, sizeof results, "%s/results.jsonl", out);
    const char *first[] = {"batch", "--input", input, "--out", out, NULL};
    const char *resume[] = {"batch", "--input", input, "--out", out, "--resume", NULL};
    int kills = 0;
    for (int round = 0; round < 5; round++) {
        /* round 0: after a random delay (maybe before the first line); rounds 1-3 after
         * a random number of new lines; round 4 at the job's last lines (or compaction) */
        size_t start_lines = count_lines(results);
        size_t grow = 1 + (size_t)rand() % 25;
        if (round == 4) {
            size_t left = N_LINES - count_ok_keys(results), back = (size_t)rand() % 3;
            grow = left > back ? left - back : 1;
        }
        double delay = (double)(rand() % 150) / 1000.0, t0 = mm_now_s();
        pid_t pid = spawn_mmctl(mmctl, svc.target, log, round ? resume : first);
        int exited = 0;
        while (!exited) {
            if (round == 0 ? mm_now_s() - t0 >= delay : count_lines(results) >= start_lines + grow) break;
            exited = waitpid(pid, NULL, WNOHANG) == pid;
            usleep(1000);
        }
        if (!exited) {
            kill(pid, SIGKILL);
            int rc = wait_status(pid);
            kills += rc == 128 + SIGKILL;
            fprintf(stderr, "round %d: killed after %.0f ms, %zu -> %zu lines\n", round, (mm_now_s() - t0) * 1e3, start_lines,
                    count_lines(results));
        } else {
            fprintf(stderr, "round %d: mmctl finished before its kill point\n", round);
        }
        check_after_kill(out, round);
    }
    EXPECT(kills >= 4, "only %d of 5 runs were killed mid-job", kills);
    int rc = run_mmctl(mmctl, svc.target, log, resume);
    EXPECT(rc == 1, "the last resume exits %d, want 1 (see %s)", rc, log);
    json_t *got = check_final(out, specs);
    check_same_results(want, got, "killed and resumed vs uninterrupted");
    json_decref(want), json_decref(got);
    svc_stop(&svc);
    return 0;
}

static int test_overflow(int argc, char **argv) {
    mm_service svc;
    /* one waiting request at most, one running: 8 in flight overflow the queue */
    static line_spec specs[N_LINES];
    if (start_service(&svc, argc, argv, "\"max_queue\": 1, \"max_batch_seqs\": 1", specs)) return 0;
    const char *mmctl = argv[4];
    char input[1024], out[1024], log[1024], results[1100];
    snprintf(input, sizeof input, "%s/input.jsonl", svc.dir);
    snprintf(log, sizeof log, "%s/overflow.log", svc.dir);

    /* retried until admitted: the same results as answered directly */
    snprintf(out, sizeof out, "%s/retried", svc.dir);
    const char *retried[] = {"batch", "--input", input, "--out", out, "--concurrency", "16", "--max-attempts", "30", NULL};
    EXPECT(run_mmctl(mmctl, svc.target, log, retried) == 1, "retried job: exit 1 (the 10 invalid lines)");
    json_t *recs = check_final(out, specs);
    long attempts = 0;
    size_t i;
    json_t *rec;
    json_array_foreach(recs, i, rec) attempts += (long)json_integer_value(json_object_get(rec, "attempts"));
    EXPECT(attempts > N_LINES - 6, "%ld attempts for %d requests: the queue never overflowed", attempts, N_LINES - 6);
    fprintf(stderr, "%ld attempts for %d requests\n", attempts, N_LINES - 6);
    check_against_direct(&svc, specs, recs);
    json_decref(recs);

    /* one attempt only: some lines give up with RESOURCE_EXHAUSTED, the job goes on */
    snprintf(out, sizeof out, "%s/gave_up", svc.dir);
    const char *gave_up[] = {"batch", "--input", input, "--out", out, "--concurrency", "16", "--max-attempts", "1", NULL};
    EXPECT(run_mmctl(mmctl, svc.target, log, gave_up) == 1, "one attempt: exit 1");
    snprintf(results, sizeof results, "%s/results.jsonl", out);
    int torn, bad, exhausted = 0, ok = 0;
    recs = load_results(results, &torn, &bad);
    json_array_foreach(recs, i, rec) {
        exhausted += strstr(rec_str(rec, "error"), "RESOURCE_EXHAUSTED") != NULL;
        ok += rec_ok(rec);
    }
    EXPECT(json_array_size(recs) == N_LINES && exhausted > 0 && ok > 0, "one attempt: %zu records, %d ok, %d RESOURCE_EXHAUSTED",
           json_array_size(recs), ok, exhausted);
    json_decref(recs);

    /* a deadline no request can meet: DEADLINE_EXCEEDED after 2 attempts each */
    char one[1024], tiny_out[1024];
    snprintf(one, sizeof one, "%s/one.jsonl", svc.dir);
    snprintf(tiny_out, sizeof tiny_out, "%s/deadline", svc.dir);
    EXPECT(write_text(one, "{\"id\": \"slow\", \"prompt\": \"Tell me a long story\", \"max_tokens\": 200}\n") == 0, "write");
    const char *deadline[] = {"--timeout", "0.000001", "batch", "--input", one, "--out", tiny_out, "--max-attempts", "2", NULL};
    EXPECT(run_mmctl(mmctl, svc.target, log, deadline) == 1, "deadline job: exit 1");
    snprintf(results, sizeof results, "%s/results.jsonl", tiny_out);
    recs = load_results(results, &torn, &bad);
    rec = json_array_get(recs, 0);
    EXPECT(json_array_size(recs) == 1 && strstr(rec_str(rec, "error"), "DEADLINE_EXCEEDED") &&
               json_integer_value(json_object_get(rec, "attempts")) == 2,
           "deadline: %s after %d attempts", rec_str(rec, "error"), (int)json_integer_value(json_object_get(rec, "attempts")));
    json_decref(recs);
    svc_stop(&svc);
    return 0;
}

/* No service: the results file and durable writes on their own. */
static json_t *record(const char *id, int line, const char *status) {
    return json_pack("{s:o,s:i,s:s}", "id", id ? json_string(id) : json_null(), "line", line, "status", status);
}

static int append(jsonl_results *r, const char *id, int line, const char *status) {
    json_t *rec = record(id, line, status);
    mm_status s = jsonl_results_append(r, rec);
    json_decref(rec);
    return s;
}

static int test_results(void) {
    char dir[] = "/tmp/mm-batch-results-XXXXXX", path[256], text[4096];
    EXPECT(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    jsonl_results r, other;
    EXPECT(jsonl_results_open(&r, dir, 0) == MM_OK, "open a new job: %s", mm_error_last());
    EXPECT(jsonl_results_open(&other, dir, 1) == MM_ERR_INVALID && strstr(mm_error_last(), "another job"),
           "a second job on the same DIR is refused: %s", mm_error_last());
    EXPECT(append(&r, "a", 1, "ok") == MM_OK && append(&r, NULL, 2, "error") == MM_OK && append(&r, "b", 3, "error") == MM_OK &&
               append(&r, "z", 9, "ok") == MM_OK,
           "append: %s", mm_error_last());
    jsonl_results_close(&r);
    EXPECT(jsonl_results_open(&r, dir, 0) == MM_ERR_INVALID && strstr(mm_error_last(), "--resume"),
           "without resume an existing job is refused: %s", mm_error_last());

    /* a torn last line (a crash inside write) is cut away at open */
    static const char torn[] = "{\"id\":\"c\",\"line\":4,\"sta";
    FILE *f = fopen(path, "ab");
    fputs(torn, f);
    fclose(f);
    struct stat st_before;
    stat(path, &st_before);
    EXPECT(jsonl_results_open(&r, dir, 1) == MM_OK, "resume: %s", mm_error_last());
    struct stat st;
    stat(path, &st);
    EXPECT(r.n_torn_bytes == strlen(torn) && st.st_size == st_before.st_size - (off_t)strlen(torn) && r.n_lines == 4, "torn tail: %zu bytes cut, %zu lines",
           r.n_torn_bytes, r.n_lines);
    EXPECT(jsonl_results_latest(&r, "i:a") == 1 && jsonl_results_latest(&r, "i:b") == 0 &&
               jsonl_results_latest(&r, "l:2") == 0 && jsonl_results_latest(&r, "i:c") == -1,
           "latest statuses after reopening");
    /* the latest line of a key wins */
    EXPECT(append(&r, "b", 3, "ok") == MM_OK && jsonl_results_latest(&r, "i:b") == 1, "b retried and ok");
    char *keys[] = {"i:b", "l:2", "i:a", "i:c"}; /* input order; c has no record, z is not in the input */
    EXPECT(jsonl_results_compact(&r, keys, 4) == MM_OK, "compact: %s", mm_error_last());
    jsonl_results_close(&r);
    char *got = mm_test_read_file(path, NULL);
    snprintf(text, sizeof text,
             "{\"id\":\"b\",\"line\":3,\"status\":\"ok\"}\n{\"id\":null,\"line\":2,\"status\":\"error\"}\n"
             "{\"id\":\"a\",\"line\":1,\"status\":\"ok\"}\n{\"id\":\"z\",\"line\":9,\"status\":\"ok\"}\n");
    EXPECT(got && !strcmp(got, text), "compacted file:\n%s\nwant:\n%s", got ? got : "(none)", text);
    free(got);

    /* durable files: whole or absent; leftovers of an interrupted write are removed */
    EXPECT(durable_file_write_all(dir, "x.bin", "hello", 5) == MM_OK, "durable write: %s", mm_error_last());
    snprintf(path, sizeof path, "%s/x.bin", dir);
    got = mm_test_read_file(path, NULL);
    EXPECT(got && !strcmp(got, "hello"), "durable file content");
    free(got);
    durable_file df;
    EXPECT(durable_file_open(&df, dir, "y.bin") == MM_OK && durable_file_write(&df, "part", 4) == MM_OK, "open y");
    close(df.fd); /* as if killed here */
    snprintf(path, sizeof path, "%s/.tmp-y.bin", dir);
    EXPECT(access(path, F_OK) == 0, "the temporary exists");
    EXPECT(durable_remove_temporaries(dir) == MM_OK && access(path, F_OK) != 0, "temporaries removed");
    snprintf(path, sizeof path, "%s/y.bin", dir);
    EXPECT(access(path, F_OK) != 0, "an uncommitted file never appears");
    snprintf(text, sizeof text, "rm -rf '%s'", dir);
    EXPECT(system(text) == 0, "cleanup");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_batch results | run|kill|overflow COORD STAGE MMCTL\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(argv[1], "results")) test_results();
    else if (!strcmp(argv[1], "run")) test_run(argc, argv);
    else if (!strcmp(argv[1], "kill")) test_kill(argc, argv);
    else if (!strcmp(argv[1], "overflow")) test_overflow(argc, argv);
    else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    return mm_test_finish(argv[1]);
}
