/* mmctl: command-line client of the MetaMorph service.
 *   mmctl [--server ADDR] generate --prompt TEXT [--image FILE ...] [--stream] [--out DIR] ...
 *   mmctl [--server ADDR] health
 *   mmctl [--server ADDR] info
 *   mmctl [--server ADDR] batch --input FILE.jsonl --out DIR ...   (mmctl_batch.c)
 * The exit code is the gRPC status code (0 OK, 3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED,
 * 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, ...); 64 for a usage error; health exits 0 only
 * when SERVING (else 14). Errors print "mmctl: CODE_NAME: message" on stderr. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>

#include "common/free_port.h"
#include "common/curve_keys.h"
#include "coordinator/api_keys.h"
#include "common/safetensors.h"
#include "proto/health.pb-c.h"
#include "proto/metamorph.pb-c.h"
#include "tools/generate_request.h"
#include "tools/mm_client.h"
#include "tools/mmctl_batch.h"

#define EXIT_USAGE 64
#define MAX_IMAGES 16

static void usage(FILE *f) {
    fprintf(f,
            "usage: mmctl [--server HOST:PORT] [--timeout S] COMMAND [options]\n"
            "commands:\n"
            "  generate --prompt TEXT [--image FILE]... [--stream] [--out DIR] [--max-tokens N]\n"
            "           [--temperature T] [--top-p P] [--top-k K] [--seed S] [--stop STR]...\n"
            "           [--generate-image] [--visual-tokens] [--ids] [--request-id ID]\n"
            "           [--steps N] [--guidance G] [--sampler pndm|ddim|dpmpp2m] [--image-seed S]\n"
            "           --image FILE     a PNG/JPEG before the prompt text (repeatable)\n"
            "           --generate-image the answer starts with <image_start> (ask for an image)\n"
            "           --out DIR        write the answer as DIR/text.txt, each generated image as\n"
            "                            DIR/image_K.png and its visual tokens as DIR/image_K.safetensors\n"
            "                            (\"image.K\": [64, D] f32, as mm-run --visual-tokens-out;\n"
            "                            mm-decode --tokens reads it)\n"
            "           --steps, --guidance, --sampler, --image-seed: the diffusion decoder's\n"
            "                            parameters (defaults: the server's steps, the model's guidance,\n"
            "                            pndm, seed 0)\n"
            "  health   exit 0 when SERVING, 14 otherwise\n"
            "  info     model, stages and live KV/queue figures\n"
            "  free-port [N]  print N (default 1) distinct loopback TCP ports, free now and below\n"
            "           the kernel's ephemeral range (so no outgoing connection takes one before\n"
            "           the service binds it), for a config the service is then started with\n"
            "  apikey NAME  make a new API key: prints the key (for the client: MM_API_KEY, or the\n"
            "           OpenAI client's api_key) and the line for api_keys_file (NAME blake2b:HASH;\n"
            "           the file never holds the key itself), then `kill -HUP` the coordinator\n"
            "  keygen FILE  make a CURVE key pair for the pools: FILE (keep it secret) and FILE.pub;\n"
            "           the coordinator's goes in pool_curve_secret_key, a worker's in --curve-key,\n"
            "           and each worker's FILE.pub line in pool_authorized_keys\n"
            "A secured service: MM_TLS_CA=FILE (TLS, trusting that CA), MM_TLS_CERT/MM_TLS_KEY (a client\n"
            "certificate), MM_API_KEY=KEY (sent as authorization: Bearer KEY).\n");
    mmctl_batch_usage(f);
    fprintf(f, "The exit code is the gRPC status code of the call (batch: 0 all ok, 1 not).\n");
}

static int fail(int code, const char *msg) {
    fprintf(stderr, "mmctl: %s: %s\n", mm_grpc_code_name(code), msg);
    return code;
}

/* mmctl apikey NAME: a random key (160 bits, hex) and its hashed line for api_keys_file. */
static int cmd_apikey(int argc, char **argv) {
    if (argc != 2 || !argv[1][0] || strlen(argv[1]) > MM_API_KEY_NAME_MAX || strpbrk(argv[1], " \t#")) {
        fprintf(stderr, "usage: mmctl apikey NAME   (NAME: 1-%d of [A-Za-z0-9_.-])\n", MM_API_KEY_NAME_MAX);
        return EXIT_USAGE;
    }
    if (sodium_init() < 0) return fail(13, "libsodium init");
    unsigned char raw[20];
    char key[3 + 2 * sizeof raw + 1] = "mm-", hash[8 + 64 + 1];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2hex(key + 3, sizeof key - 3, raw, sizeof raw);
    mm_api_key_hash_text(key, hash);
    printf("%s\n%s %s\n", key, argv[1], hash);
    fprintf(stderr, "mmctl: line 1 is the key (give it to the client; it is not stored anywhere), line 2 goes "
                    "into api_keys_file; then kill -HUP the coordinator\n");
    return 0;
}

static int read_file(const char *path, uint8_t **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = malloc(n > 0 ? (size_t)n : 1);
    *len = *data && n >= 0 ? fread(*data, 1, (size_t)n, f) : 0;
    fclose(f);
    return *data && (long)*len == n ? 0 : -1;
}

/* Writes image i of a response into dir: its PNG bytes (once a decoder pool serves
 * them) and its visual tokens as image_i.safetensors, tensor "image.i" [n_tokens, dim]
 * f32: the layout of mm-run --visual-tokens-out, readable by mm-decode --tokens. */
static void save_image(const char *dir, int i, const Metamorph__V1__GeneratedImage *im) {
    if (!dir) return;
    char path[4200];
    mkdir(dir, 0755);
    if (im->png.len) {
        snprintf(path, sizeof path, "%s/image_%d.png", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(im->png.data, 1, im->png.len, f) != im->png.len) fprintf(stderr, "mmctl: cannot write %s\n", path);
        if (f) fclose(f);
    }
    if (im->n_visual_tokens) {
        char name[32];
        snprintf(path, sizeof path, "%s/image_%d.safetensors", dir, i);
        snprintf(name, sizeof name, "image.%d", i);
        mm_st_write_tensor t = {name, MM_DTYPE_F32, 2, {im->n_tokens, im->dim}, im->visual_tokens};
        if ((size_t)im->n_tokens * (size_t)im->dim != im->n_visual_tokens)
            fprintf(stderr, "mmctl: image %d: %zu floats for %d x %d tokens\n", i, im->n_visual_tokens, im->n_tokens, im->dim);
        else if (mm_safetensors_write(path, &t, 1) != MM_OK)
            fprintf(stderr, "mmctl: %s\n", mm_error_last());
    }
    fprintf(stderr, "mmctl: image %d: %d visual tokens%s%s\n", i, im->n_tokens, im->n_visual_tokens ? " written" : "",
            im->png.len ? ", PNG written" : " (no PNG: the service has no decoder pool)");
    if (im->png.len) printf("image %d: %s/image_%d.png\n", i, dir, i);
}

/* DIR/text.txt: the whole answer (streamed answers are gathered first). */
static void save_text(const char *dir, const char *text, size_t len) {
    if (!dir) return;
    char path[4200];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/text.txt", dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0) fprintf(stderr, "mmctl: cannot write %s\n", path);
}

typedef struct {
    int ids, n_images;
    const char *out;
    char *text;               /* streamed answer so far, for --out */
    size_t text_len;
} gen_state;

static void print_ids(const int32_t *ids, size_t n, int *first) {
    for (size_t i = 0; i < n; i++) printf(*first ? "%d" : " %d", ids[i]), *first = 0;
}

static int first_id = 1;
static int mid_line; /* stdout's last line has not ended */

/* Ends the text's last line (stdout flushed before stderr speaks: notes about saved
 * files and the figures never land inside the text). */
static void end_text_line(void) {
    printf("\n");
    fflush(stdout);
    mid_line = 0;
}

static void print_stats(const Metamorph__V1__GenerateResponse *r) {
    fflush(stdout); /* the saved files' lines first */
    fprintf(stderr, "mmctl: %s, %d prompt + %d completion tokens, ttft %.1f ms, %.1f tokens/s\n", r->finish_reason,
            r->usage ? r->usage->prompt_tokens : 0, r->usage ? r->usage->completion_tokens : 0,
            r->timings ? r->timings->ttft_ms : 0, r->timings ? r->timings->tokens_per_s : 0);
}

static int on_unary(void *user, const uint8_t *d, size_t n) {
    gen_state *g = user;
    Metamorph__V1__GenerateResponse *r = metamorph__v1__generate_response__unpack(NULL, n, d);
    if (!r) return 1;
    if (g->ids) print_ids(r->token_ids, r->n_token_ids, &first_id);
    else fputs(r->text, stdout);
    end_text_line();
    save_text(g->out, r->text, strlen(r->text));
    for (size_t i = 0; i < r->n_images; i++) save_image(g->out, (int)i, r->images[i]);
    print_stats(r);
    metamorph__v1__generate_response__free_unpacked(r, NULL);
    return 0;
}

static int on_event(void *user, const uint8_t *d, size_t n) {
    gen_state *g = user;
    Metamorph__V1__GenerateEvent *ev = metamorph__v1__generate_event__unpack(NULL, n, d);
    if (!ev) return 1;
    switch (ev->event_case) {
    case METAMORPH__V1__GENERATE_EVENT__EVENT_DELTA:
        if (g->ids) print_ids(ev->delta->token_ids, ev->delta->n_token_ids, &first_id);
        else fputs(ev->delta->text, stdout);
        if (g->ids ? ev->delta->n_token_ids > 0 : ev->delta->text[0] != 0)
            mid_line = g->ids || ev->delta->text[strlen(ev->delta->text) - 1] != '\n';
        fflush(stdout);
        if (g->out) {
            size_t n = strlen(ev->delta->text);
            char *t = realloc(g->text, g->text_len + n + 1);
            if (t) memcpy(t + g->text_len, ev->delta->text, n + 1), g->text = t, g->text_len += n;
        }
        break;
    case METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_STARTED:
        if (mid_line) end_text_line(), first_id = 1;
        fflush(stdout);
        fprintf(stderr, "mmctl: [image %d started]\n", ev->image_started->index);
        break;
    case METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_READY:
        if (mid_line) end_text_line(), first_id = 1;
        save_image(g->out, g->n_images++, ev->image_ready);
        fflush(stdout);
        break;
    case METAMORPH__V1__GENERATE_EVENT__EVENT_FINAL: {
        const Metamorph__V1__GenerateResponse *r = ev->final;
        if (mid_line) end_text_line();
        fflush(stdout);
        save_text(g->out, g->text ? g->text : "", g->text_len);
        print_stats(r);
        break;
    }
    default: break;
    }
    metamorph__v1__generate_event__free_unpacked(ev, NULL);
    return 0;
}

static int cmd_generate(mm_client *cl, double timeout, int argc, char **argv) {
    static const struct option opts[] = {
        {"prompt", required_argument, 0, 'p'},      {"image", required_argument, 0, 'i'},
        {"stream", no_argument, 0, 's'},            {"out", required_argument, 0, 'o'},
        {"max-tokens", required_argument, 0, 'n'},  {"temperature", required_argument, 0, 't'},
        {"top-p", required_argument, 0, 'P'},       {"top-k", required_argument, 0, 'k'},
        {"seed", required_argument, 0, 'S'},        {"stop", required_argument, 0, 'x'},
        {"generate-image", no_argument, 0, 'g'},    {"visual-tokens", no_argument, 0, 'v'},
        {"ids", no_argument, 0, 'I'},               {"request-id", required_argument, 0, 'r'},
        {"steps", required_argument, 0, 'T'},       {"guidance", required_argument, 0, 'G'},
        {"sampler", required_argument, 0, 'A'},     {"image-seed", required_argument, 0, 'E'},
        {0, 0, 0, 0}};
    Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
    Metamorph__V1__ImageParams ip = METAMORPH__V1__IMAGE_PARAMS__INIT;
    mm_generate_args req = {.sampling = &sp, .image = &ip};
    const char *prompt = NULL, *images[MAX_IMAGES];
    char *stops[16];
    int n_images = 0, stream = 0;
    gen_state g = {0};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'i': if (n_images == MAX_IMAGES) return fail(3, "too many --image"); images[n_images++] = optarg; break;
        case 's': stream = 1; break;
        case 'o': g.out = optarg, ip.return_visual_tokens = 1; break;
        case 'n': sp.max_new_tokens = atoi(optarg); break;
        case 't': sp.temperature = strtof(optarg, NULL); break;
        case 'P': sp.top_p = strtof(optarg, NULL); break;
        case 'k': sp.top_k = atoi(optarg); break;
        case 'S': sp.seed = strtoull(optarg, NULL, 10); break;
        case 'x': if (sp.n_stop == 16) return fail(3, "too many --stop"); stops[sp.n_stop++] = optarg; break;
        case 'g': req.generate_image = 1; break;
        case 'v': ip.return_visual_tokens = 1; break;
        case 'I': g.ids = 1; break;
        case 'r': req.request_id = optarg; break;
        case 'T': ip.steps = atoi(optarg); break;
        case 'G': ip.guidance = strtof(optarg, NULL); break;
        case 'A': ip.sampler = optarg; break;
        case 'E': ip.seed = strtoull(optarg, NULL, 10); break;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (!prompt) {
        usage(stderr);
        return EXIT_USAGE;
    }
    sp.stop = stops;
    uint8_t *datas[MAX_IMAGES] = {0};
    size_t lens[MAX_IMAGES];
    for (int i = 0; i < n_images; i++) {
        if (read_file(images[i], &datas[i], &lens[i])) {
            fprintf(stderr, "mmctl: cannot read %s: %s\n", images[i], strerror(errno));
            return EXIT_USAGE;
        }
    }
    req.prompt = prompt, req.images = (const uint8_t *const *)datas, req.image_lens = lens;
    req.n_images = (size_t)n_images;
    uint8_t *buf;
    size_t len;
    if (mm_generate_request_pack(&req, &buf, &len) != MM_OK) {
        for (int i = 0; i < n_images; i++) free(datas[i]);
        return fail(8 /* RESOURCE_EXHAUSTED */, mm_error_last());
    }
    char err[512];
    int code = mm_client_call(cl, stream ? "/metamorph.v1.MetaMorph/GenerateStream" : "/metamorph.v1.MetaMorph/Generate",
                              buf, len, timeout, stream ? on_event : on_unary, &g, err, sizeof err);
    free(buf);
    free(g.text);
    for (int i = 0; i < n_images; i++) free(datas[i]);
    return code ? fail(code, err) : 0;
}

static int on_health(void *user, const uint8_t *d, size_t n) {
    Grpc__Health__V1__HealthCheckResponse *r = grpc__health__v1__health_check_response__unpack(NULL, n, d);
    if (!r) return 1;
    *(int *)user = r->status;
    grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    return 0;
}

static int cmd_health(mm_client *cl, double timeout) {
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    uint8_t buf[64];
    size_t len = grpc__health__v1__health_check_request__pack(&req, buf);
    int status = 0;
    char err[512];
    int code = mm_client_call(cl, "/grpc.health.v1.Health/Check", buf, len, timeout, on_health, &status, err, sizeof err);
    if (code) return fail(code, err);
    int serving = status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    printf("%s\n", serving ? "SERVING" : "NOT_SERVING");
    return serving ? 0 : 14;
}

static int on_info(void *user, const uint8_t *d, size_t n) {
    Metamorph__V1__ModelInfo *m = metamorph__v1__model_info__unpack(NULL, n, d);
    if (!m) return 1;
    printf("{\"model\": \"%s\", \"vocab_size\": %d, \"n_layers\": %d, \"dim\": %d, \"max_context\": %d, "
           "\"vision\": %s, \"image_generation\": %s, \"serving\": %s,\n \"kv_block_size\": %d, \"kv_blocks_total\": %d, "
           "\"kv_blocks_used\": %d, \"kv_blocks_cached\": %d, \"requests_running\": %d, \"requests_waiting\": %d,\n \"stages\": [",
           m->model, m->vocab_size, m->n_layers, m->dim, m->max_context, m->vision ? "true" : "false",
           m->image_generation ? "true" : "false", m->serving ? "true" : "false", m->kv_block_size, m->kv_blocks_total,
           m->kv_blocks_used, m->kv_blocks_cached, m->requests_running, m->requests_waiting);
    for (size_t i = 0; i < m->n_stages; i++) {
        const Metamorph__V1__StageInfo *s = m->stages[i];
        printf("%s\n  {\"rank\": %d, \"host\": \"%s\", \"pid\": %d, \"layers\": [%d, %d], \"blocks\": [%d, %d], "
               "\"busy_ms\": %.1f, \"steps\": %llu}",
               i ? "," : "", s->rank, s->host, s->pid, s->layer_begin, s->layer_end, s->block_begin, s->block_end,
               s->busy_ms, (unsigned long long)s->steps);
    }
    printf("]}\n");
    metamorph__v1__model_info__free_unpacked(m, NULL);
    return 0;
}

static int cmd_info(mm_client *cl, double timeout) {
    char err[512];
    int code = mm_client_call(cl, "/metamorph.v1.MetaMorph/GetModelInfo", "", 0, timeout, on_info, NULL, err, sizeof err);
    return code ? fail(code, err) : 0;
}

int main(int argc, char **argv) {
    const char *server = "127.0.0.1:50051";
    double timeout = 0;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--server") && i + 1 < argc) server = argv[++i];
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) timeout = atof(argv[++i]);
        else if (!strcmp(argv[i], "--help")) return usage(stdout), 0;
        else return usage(stderr), EXIT_USAGE;
    }
    if (i >= argc) return usage(stderr), EXIT_USAGE;
    const char *cmd = argv[i];
    if (!strcmp(cmd, "free-port")) {
        int n = i + 1 < argc ? atoi(argv[i + 1]) : 1;
        if (n < 1 || n > 64) return usage(stderr), EXIT_USAGE;
        for (int k = 0; k < n; k++) {
            int port = mm_free_port();
            if (port < 0) return fprintf(stderr, "mmctl: no free loopback port\n"), 1;
            printf("%d%c", port, k + 1 < n ? ' ' : '\n');
        }
        return 0;
    }
    if (!strcmp(cmd, "apikey")) return cmd_apikey(argc - i, argv + i);
    if (!strcmp(cmd, "keygen")) {
        if (i + 2 != argc) return usage(stderr), EXIT_USAGE;
        if (mm_curve_keygen(argv[i + 1]) != MM_OK) return fail(13, mm_error_last());
        fprintf(stderr, "mmctl: CURVE key pair in %s (secret, 0600) and %s.pub (public)\n", argv[i + 1], argv[i + 1]);
        return 0;
    }
    mm_client *cl;
    if (mm_client_open(server, &cl) != MM_OK) return fail(3, mm_error_last()); /* INVALID_ARGUMENT: a bad address */
    int rc;
    if (!strcmp(cmd, "generate")) rc = cmd_generate(cl, timeout, argc - i, argv + i);
    else if (!strcmp(cmd, "health")) rc = cmd_health(cl, timeout > 0 ? timeout : 5);
    else if (!strcmp(cmd, "info")) rc = cmd_info(cl, timeout > 0 ? timeout : 5);
    else if (!strcmp(cmd, "batch")) rc = mmctl_batch(cl, timeout, argc - i, argv + i);
    else {
        usage(stderr);
        rc = EXIT_USAGE;
    }
    mm_client_close(cl);
    return rc;
}
