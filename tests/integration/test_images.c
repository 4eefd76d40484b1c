/* Integration tests of images through the service, each starting and stopping its own
 * `mpiexec mm-coordinator : mm-stage x P` job on the tiny model, with one mm-encoder and
 * one mm-decoder worker (svc_start):
 *   test_images understand P COORD STAGE MM_RUN         image + prompt == mm-run --image (ids and text,
 *                                                       unary and stream)
 *   test_images generate P COORD STAGE MM_RUN MMCTL     generate_image: the 64 visual tokens are
 *                                                       bit-identical to mm-run --visual-tokens-out, the
 *                                                       text after equal; stream events; mmctl --out file
 *   test_images mixed COORD STAGE                       a multi-turn conversation with images in two turns
 *                                                       (and one asking for an image) == the model run in
 *                                                       this process; run concurrently == alone; KV back to 0;
 *                                                       re-sent, it hits the prefix cache across an image
 *   test_images bad COORD STAGE                         undecodable / truncated / oversized / too many
 *                                                       images and fake image markers: INVALID_ARGUMENT
 *                                                       naming the part; the service stays healthy */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "common/image.h"
#include "model/manifest.h"
#include "model/metamorph.h"
#include "model/vision_tower.h"
#include "service.h"
#include "tests/testutil.h"

#define MAX_PARTS 4
#define MAX_MSGS 4
#define MAX_IMGS 4

/* A part is text, or "@file" for a bundled test image (tests/golden/vision/images). */
typedef struct {
    const char *role;
    const char *parts[MAX_PARTS];
} msg_spec;

typedef struct {
    int code;
    char msg[512];
    int32_t ids[4096];       /* every generated id, a visual token as -1 */
    int n_ids;
    char text[65536];
    float *visual[MAX_IMGS]; /* [n_tokens * dim] of each image (when returned) */
    int n_visual[MAX_IMGS], n_images;
    int started[MAX_IMGS], n_started;
    int ready_before_start;  /* an image_ready before its image_started */
} img_result;

static void result_free(img_result *r) {
    for (int i = 0; i < r->n_images; i++) free(r->visual[i]);
}

/* buf: the caller's (requests are packed on several threads at once) */
static const char *image_path(const char *name, char buf[1024]) {
    snprintf(buf, 1024, "%s/tests/golden/vision/images/%s", getenv("MM_SOURCE_DIR"), name);
    return buf;
}

/* Packs a GenerateRequest. Image parts come from files ("@name") or, for "#k", from
 * raw[k] (crafted bytes). */
typedef struct {
    const uint8_t *data;
    size_t len;
} raw_image;

static uint8_t *pack_request(const msg_spec *msgs, int n_msgs, int generate_image, int max_new, const raw_image *raw,
                             size_t *len) {
    Metamorph__V1__ContentPart parts[MAX_MSGS][MAX_PARTS], *pp[MAX_MSGS][MAX_PARTS];
    Metamorph__V1__ChatMessage m[MAX_MSGS], *mp[MAX_MSGS];
    uint8_t *files[MAX_MSGS * MAX_PARTS];
    int n_files = 0;
    for (int i = 0; i < n_msgs; i++) {
        metamorph__v1__chat_message__init(&m[i]);
        m[i].role = (char *)msgs[i].role;
        int n = 0;
        for (; n < MAX_PARTS && msgs[i].parts[n]; n++) {
            const char *p = msgs[i].parts[n];
            Metamorph__V1__ContentPart *cp = &parts[i][n];
            metamorph__v1__content_part__init(cp);
            if (p[0] == '@') {
                size_t l = 0;
                char path[1024];
                files[n_files] = (uint8_t *)mm_test_read_file(image_path(p + 1, path), &l);
                cp->kind_case = METAMORPH__V1__CONTENT_PART__KIND_IMAGE;
                cp->image.data = files[n_files++], cp->image.len = l;
            } else if (p[0] == '#') {
                cp->kind_case = METAMORPH__V1__CONTENT_PART__KIND_IMAGE;
                cp->image.data = (uint8_t *)raw[p[1] - '0'].data, cp->image.len = raw[p[1] - '0'].len;
            } else {
                cp->kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT;
                cp->text = (char *)p;
            }
            pp[i][n] = cp;
        }
        m[i].n_parts = (size_t)n, m[i].parts = pp[i];
        mp[i] = &m[i];
    }
    Metamorph__V1__SamplingParams sp = METAMORPH__V1__SAMPLING_PARAMS__INIT;
    sp.max_new_tokens = max_new;
    Metamorph__V1__ImageParams ip = METAMORPH__V1__IMAGE_PARAMS__INIT;
    ip.return_visual_tokens = 1;
    Metamorph__V1__GenerateRequest req = METAMORPH__V1__GENERATE_REQUEST__INIT;
    req.n_messages = (size_t)n_msgs, req.messages = mp, req.sampling = &sp, req.image = &ip;
    req.generate_image = generate_image;
    *len = metamorph__v1__generate_request__get_packed_size(&req);
    uint8_t *buf = malloc(*len ? *len : 1);
    metamorph__v1__generate_request__pack(&req, buf);
    for (int i = 0; i < n_files; i++) free(files[i]);
    return buf;
}

static void take_image(img_result *g, const Metamorph__V1__GeneratedImage *im) {
    if (g->n_images == MAX_IMGS) return;
    int k = g->n_images++;
    g->n_visual[k] = (int)im->n_visual_tokens;
    g->visual[k] = malloc((im->n_visual_tokens ? im->n_visual_tokens : 1) * sizeof(float));
    memcpy(g->visual[k], im->visual_tokens, im->n_visual_tokens * sizeof(float));
}

static void add_ids(img_result *g, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n && g->n_ids < 4096; i++) g->ids[g->n_ids++] = ids[i];
}

static void add_text(img_result *g, const char *t) {
    size_t have = strlen(g->text);
    snprintf(g->text + have, sizeof g->text - have, "%s", t);
}

static int on_unary(void *user, const uint8_t *d, size_t n) {
    img_result *g = user;
    Metamorph__V1__GenerateResponse *r = metamorph__v1__generate_response__unpack(NULL, n, d);
    if (!r) return 1;
    add_ids(g, r->token_ids, r->n_token_ids);
    add_text(g, r->text);
    for (size_t i = 0; i < r->n_images; i++) take_image(g, r->images[i]);
    metamorph__v1__generate_response__free_unpacked(r, NULL);
    return 0;
}

static int on_stream(void *user, const uint8_t *d, size_t n) {
    img_result *g = user;
    Metamorph__V1__GenerateEvent *ev = metamorph__v1__generate_event__unpack(NULL, n, d);
    if (!ev) return 1;
    switch (ev->event_case) {
    case METAMORPH__V1__GENERATE_EVENT__EVENT_DELTA:
        add_ids(g, ev->delta->token_ids, ev->delta->n_token_ids);
        add_text(g, ev->delta->text);
        break;
    case METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_STARTED:
        if (g->n_started < MAX_IMGS) g->started[g->n_started++] = ev->image_started->index;
        break;
    case METAMORPH__V1__GENERATE_EVENT__EVENT_IMAGE_READY:
        if (g->n_started <= g->n_images) g->ready_before_start = 1;
        take_image(g, ev->image_ready);
        break;
    default: break;
    }
    metamorph__v1__generate_event__free_unpacked(ev, NULL);
    return 0;
}

static void call(mm_service *s, const msg_spec *msgs, int n_msgs, int generate_image, int max_new, int stream,
                 img_result *out) {
    memset(out, 0, sizeof *out);
    size_t len;
    uint8_t *buf = pack_request(msgs, n_msgs, generate_image, max_new, NULL, &len);
    out->code = mm_client_call(s->cl, stream ? "/metamorph.v1.MetaMorph/GenerateStream" : "/metamorph.v1.MetaMorph/Generate",
                               buf, len, 60, stream ? on_stream : on_unary, out, out->msg, sizeof out->msg);
    free(buf);
}

/* Text ids of a result (visual tokens, -1, left out): what mm-run --ids prints. */
static int text_ids(const img_result *g, int32_t *out) {
    int n = 0;
    for (int i = 0; i < g->n_ids; i++)
        if (g->ids[i] >= 0) out[n++] = g->ids[i];
    return n;
}

/* ---------------------------------------------------------------- mm-run */

/* Runs mm-run on the tiny model; *out gets its stdout (malloc'd). */
static int mm_run(const char *mm_run_path, const char *args, char **out) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' --model '%s/tiny' --threads 1 %s 2>/dev/null", mm_run_path, getenv("MM_ASSETS_DIR"),
             args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    size_t got;
    while ((got = fread(b + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 == cap) b = realloc(b, cap *= 2);
    }
    b[n] = 0;
    *out = b;
    return pclose(p);
}

static int parse_ids(const char *s, int32_t *ids) {
    int n = 0, k;
    long v;
    while (n < 4096 && sscanf(s, "%ld%n", &v, &k) == 1) ids[n++] = (int32_t)v, s += k;
    return n;
}

/* tensor "image.0" of a safetensors file [n floats] (malloc'd), NULL if absent. */
static float *read_visual(const char *path, size_t *n) {
    mm_safetensors *st;
    if (mm_safetensors_open(path, &st) != MM_OK) return NULL;
    const mm_st_tensor *t = mm_safetensors_find(st, "image.0");
    float *v = NULL;
    if (t && t->dtype == MM_DTYPE_F32) {
        v = malloc(t->nbytes);
        memcpy(v, t->data, t->nbytes);
        *n = (size_t)t->numel;
    }
    mm_safetensors_close(st);
    return v;
}

/* ---------------------------------------------------------------- understand */

static int test_understand(int P, const char *coord, const char *stage, const char *mm_run_path) {
    mm_service s;
    EXPECT(svc_start(&s, coord, stage, P, "\"max_batch_tokens\": 48") == 0, "start with %d stages", P);
    static const char *images[] = {"rgb_37x23.png", "baseline_45x33.jpg", "palette4_33x29.png"};
    const char *prompt = "What is in this picture?";
    for (int i = 0; i < 3 && s.cl; i++) {
        char args[2048], path[1024], *ids_out = NULL, *text_out = NULL;
        snprintf(args, sizeof args, "--image '%s' --prompt '%s' --max-tokens 40", image_path(images[i], path), prompt);
        char with_ids[2100];
        snprintf(with_ids, sizeof with_ids, "%s --ids", args);
        EXPECT(mm_run(mm_run_path, with_ids, &ids_out) == 0 && mm_run(mm_run_path, args, &text_out) == 0, "mm-run %s",
               images[i]);
        if (!ids_out || !text_out) break;
        static int32_t want[4096], got[4096];
        int n_want = parse_ids(ids_out, want);
        size_t tl = strlen(text_out);
        if (tl && text_out[tl - 1] == '\n') text_out[tl - 1] = 0; /* mm-run ends with a newline */
        char at[64];
        snprintf(at, sizeof at, "@%s", images[i]);
        msg_spec m = {"user", {at, prompt}};
        static img_result u, st;
        call(&s, &m, 1, 0, 40, 0, &u);
        call(&s, &m, 1, 0, 40, 1, &st);
        EXPECT(u.code == 0 && st.code == 0, "%s: %s / %s", images[i], u.msg, st.msg);
        int n_got = text_ids(&u, got);
        EXPECT(n_want > 0 && n_got == n_want && !memcmp(got, want, sizeof(int32_t) * (size_t)n_want),
               "P=%d %s: service ids (%d) differ from mm-run's (%d)", P, images[i], n_got, n_want);
        EXPECT(!strcmp(u.text, text_out), "P=%d %s: text differs from mm-run's:\n  service: %s\n  mm-run:  %s", P,
               images[i], u.text, text_out);
        EXPECT(st.n_ids == u.n_ids && !memcmp(st.ids, u.ids, sizeof(int32_t) * (size_t)u.n_ids) && !strcmp(st.text, u.text),
               "P=%d %s: stream differs from unary", P, images[i]);
        result_free(&u), result_free(&st);
        free(ids_out), free(text_out);
    }
    Metamorph__V1__ModelInfo *m = svc_info(&s);
    EXPECT(m && m->vision && m->image_generation && m->kv_blocks_used == 0, "info: vision %d, generation %d, %d blocks",
           m ? m->vision : -1, m ? m->image_generation : -1, m ? m->kv_blocks_used : -1);
    if (m) metamorph__v1__model_info__free_unpacked(m, NULL);
    int stc = svc_stop(&s);
    EXPECT(WIFEXITED(stc) && WEXITSTATUS(stc) == 0, "clean stop (status %d)", stc);
    return 0;
}

/* ---------------------------------------------------------------- generate */

static int test_generate(int P, const char *coord, const char *stage, const char *mm_run_path, const char *mmctl) {
    mm_service s;
    EXPECT(svc_start(&s, coord, stage, P, "") == 0, "start with %d stages", P);
    if (!s.cl) return 0;
    const char *prompt = "Draw a cat on a red sofa.";
    const int max_new = 90; /* 64 visual tokens, then text */
    char ref[512], args[2048], *ids_out = NULL;
    snprintf(ref, sizeof ref, "%s/ref.safetensors", s.dir);
    snprintf(args, sizeof args, "--prompt '%s' --generate-image --visual-tokens-out '%s' --max-tokens %d --ids", prompt,
             ref, max_new);
    EXPECT(mm_run(mm_run_path, args, &ids_out) == 0, "mm-run --generate-image");
    static int32_t want[4096], got[4096];
    int n_want = ids_out ? parse_ids(ids_out, want) : 0;
    free(ids_out);
    size_t n_ref = 0;
    float *vref = read_visual(ref, &n_ref);
    EXPECT(vref && n_ref == 64 * 48, "mm-run's visual tokens (%zu floats)", n_ref);
    msg_spec m = {"user", {prompt}};
    for (int stream = 0; stream < 2 && vref; stream++) {
        static img_result g;
        call(&s, &m, 1, 1, max_new, stream, &g);
        EXPECT(g.code == 0, "%s: %s", stream ? "stream" : "unary", g.msg);
        int n_vis = 0;
        for (int i = 0; i < g.n_ids; i++) n_vis += g.ids[i] < 0;
        EXPECT(g.n_ids >= 64 && n_vis == 64 && g.ids[0] == -1 && g.ids[63] == -1,
               "%s: the first 64 positions are visual tokens (%d of %d)", stream ? "stream" : "unary", n_vis, g.n_ids);
        EXPECT(g.n_images == 1 && g.n_visual[0] == (int)n_ref && !memcmp(g.visual[0], vref, n_ref * sizeof(float)),
               "P=%d %s: visual tokens differ from mm-run's (%d images, %d floats, max diff %g)", P,
               stream ? "stream" : "unary", g.n_images, g.n_images ? g.n_visual[0] : 0,
               g.n_images && g.n_visual[0] == (int)n_ref ? mm_max_abs_diff(g.visual[0], vref, n_ref) : -1.0);
        int n_got = text_ids(&g, got);
        EXPECT(n_want > 0 && n_got == n_want && !memcmp(got, want, sizeof(int32_t) * (size_t)n_want),
               "P=%d %s: text ids after the image (%d) differ from mm-run's (%d)", P, stream ? "stream" : "unary", n_got,
               n_want);
        if (stream)
            EXPECT(g.n_started == 1 && g.started[0] == 0 && !g.ready_before_start,
                   "stream: image_started(0) then image_ready (%d started, ready first %d)", g.n_started,
                   g.ready_before_start);
        result_free(&g);
    }
    /* mmctl --generate-image --out DIR writes the file mm-run writes */
    char cmd[4096], out_dir[512], file[600];
    snprintf(out_dir, sizeof out_dir, "%s/mmctl_out", s.dir);
    snprintf(cmd, sizeof cmd, "'%s' --server %s generate --prompt '%s' --generate-image --max-tokens %d --out '%s' "
             ">/dev/null 2>&1", mmctl, s.target, prompt, max_new, out_dir);
    EXPECT(system(cmd) == 0, "mmctl --generate-image --out");
    snprintf(file, sizeof file, "%s/image_0.safetensors", out_dir);
    size_t n_ctl = 0;
    float *vctl = read_visual(file, &n_ctl);
    EXPECT(vctl && vref && n_ctl == n_ref && !memcmp(vctl, vref, n_ref * sizeof(float)),
           "mmctl's %s holds mm-run's visual tokens", file);
    free(vctl), free(vref);
    int stc = svc_stop(&s);
    EXPECT(WIFEXITED(stc) && WEXITSTATUS(stc) == 0, "clean stop (status %d)", stc);
    return 0;
}

/* ---------------------------------------------------------------- mixed */

typedef struct {
    int32_t ids[4096];
    int n_ids;
    float *images; /* [n_images, 64, D] */
    int n_images;
} ref_out;

/* The conversation through the model in this process (mm_metamorph_generate, SigLIP
 * per image): what the service must answer. */
static int reference(const msg_spec *msgs, int n_msgs, int generate_image, int max_new, ref_out *out) {
    memset(out, 0, sizeof *out);
    char root[1024], tok_path[4200];
    snprintf(root, sizeof root, "%s/tiny", getenv("MM_ASSETS_DIR"));
    mm_model_paths paths;
    mm_backend *be = NULL;
    mm_tokenizer *tok = NULL;
    mm_llama *llm = NULL;
    mm_metamorph *mm = NULL;
    mm_vision_tower vt = {0};
    mm_kv_cache *kv = NULL;
    mm_llama_seq seq = {0};
    int32_t *ids = NULL;
    float *pix = NULL, *vis = NULL;
    char *texts[MAX_MSGS] = {0};
    const char *files[MAX_MSGS * MAX_PARTS];
    int n_files = 0, n_img = 0;
    size_t n = 0;
    mm_status s;
    CHECK_GOTO(mm_model_paths_resolve(root, &paths), s, out);
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", paths.llm);
    CHECK_GOTO(mm_backend_init("cpu", 1, &be), s, out);
    CHECK_GOTO(mm_tokenizer_load(tok_path, &tok), s, out);
    CHECK_GOTO(mm_llama_load(paths.llm, be, 0, -1, MM_LLAMA_EMBED | MM_LLAMA_HEAD, &llm), s, out);
    CHECK_GOTO(mm_metamorph_load(paths.llm, llm, tok, &mm), s, out);
    CHECK_GOTO(mm_vision_tower_load(root, be, &vt), s, out);
    mm_siglip *sig = vt.sig;
    mm_chat_message cm[MAX_MSGS];
    for (int i = 0; i < n_msgs; i++) {
        mm_content_part parts[MAX_PARTS];
        int k = 0;
        for (; k < MAX_PARTS && msgs[i].parts[k]; k++) {
            int img = msgs[i].parts[k][0] == '@';
            parts[k] = (mm_content_part){img, img ? NULL : msgs[i].parts[k]};
            if (img) files[n_files++] = msgs[i].parts[k] + 1;
        }
        CHECK_GOTO(mm_metamorph_render_content(parts, (size_t)k, &texts[i]), s, out);
        cm[i] = (mm_chat_message){msgs[i].role, texts[i]};
    }
    CHECK_GOTO(mm_metamorph_prompt_encode(tok, cm, (size_t)n_msgs, generate_image, &ids, &n, &n_img), s, out);
    const int64_t S = sig->cfg.image_size, T = mm->cfg.n_image_tokens, D = mm->cfg.mm_hidden;
    pix = malloc((size_t)(3 * S * S) * sizeof *pix);
    vis = malloc((size_t)((n_files ? n_files : 1) * T * D) * sizeof *vis);
    for (int k = 0; k < n_files; k++) {
        mm_image im;
        char path[1024];
        CHECK_GOTO(mm_image_load(image_path(files[k], path), NULL, &im), s, out);
        s = mm_siglip_preprocess(&sig->pp, &im, pix);
        mm_image_free(&im);
        CHECK_GOTO(s, s, out);
        CHECK_GOTO(mm_siglip_encode(sig, pix, 1, (int32_t)T, NULL, vis + (size_t)(k * T * D)), s, out);
    }
    CHECK_GOTO(mm_kv_cache_init_typed(be, llm->cfg.n_layers, mm_kv_cache_blocks_for(2048, MM_KV_BLOCK_SIZE), MM_KV_BLOCK_SIZE, llm->cfg.n_kv_heads,
                                      llm->cfg.head_dim, mm_llama_kv_dtype(llm), &kv), s, out);
    mm_sampler sampler;
    CHECK_GOTO(mm_sampler_init(&sampler, 0, 1, 0, 0), s, out);
    mm_metamorph_gen g = {&sampler, max_new, NULL, NULL, NULL};
    mm_metamorph_output o;
    CHECK_GOTO(mm_metamorph_generate(mm, kv, &seq, ids, n, vis, n_img, &g, &o), s, out);
    out->n_ids = (int)o.n_ids;
    memcpy(out->ids, o.ids, o.n_ids * sizeof *o.ids);
    out->n_images = o.n_images;
    out->images = o.images;
    o.images = NULL;
    mm_metamorph_output_free(&o);
out:
    if (s != MM_OK) fprintf(stderr, "reference: %s\n", mm_error_last());
    if (kv) mm_kv_seq_release(kv, &seq.kv);
    mm_kv_cache_free(kv);
    for (int i = 0; i < n_msgs; i++) free(texts[i]);
    free(ids), free(pix), free(vis);
    mm_vision_tower_free(&vt);
    mm_metamorph_free(mm);
    mm_llama_free(llm);
    mm_tokenizer_free(tok);
    mm_backend_free(be);
    return s == MM_OK ? 0 : -1;
}

static const msg_spec MIXED[] = {
    {"user", {"@rgb_37x23.png", "What is this?"}},
    {"assistant", {"A small picture with some colours."}},
    {"user", {"And this one", "@baseline_45x33.jpg", "@gray_29x35.jpg", "how do they compare?"}},
};
#define N_MIXED 3

typedef struct {
    mm_service *s;
    int generate_image, max_new, stream;
    const msg_spec *msgs;
    int n_msgs;
    img_result r;
} conc_arg;

static void *conc_main(void *p) {
    conc_arg *a = p;
    call(a->s, a->msgs, a->n_msgs, a->generate_image, a->max_new, a->stream, &a->r);
    return NULL;
}

static int same_result(const img_result *a, const img_result *b) {
    if (a->n_ids != b->n_ids || memcmp(a->ids, b->ids, sizeof(int32_t) * (size_t)a->n_ids) || a->n_images != b->n_images)
        return 0;
    for (int i = 0; i < a->n_images; i++)
        if (a->n_visual[i] != b->n_visual[i] || memcmp(a->visual[i], b->visual[i], sizeof(float) * (size_t)a->n_visual[i]))
            return 0;
    return 1;
}

static int test_mixed(const char *coord, const char *stage) {
    mm_service s;
    /* a small KV cache and token budget: preemption and chunked prefill across images */
    EXPECT(svc_start(&s, coord, stage, 2, "\"kv_blocks\": 40, \"max_batch_tokens\": 40") == 0, "start");
    if (!s.cl) return 0;
    static const struct {
        int generate_image, max_new;
    } cases[] = {{0, 40}, {1, 80}};
    static img_result solo[2];
    for (int c = 0; c < 2; c++) {
        static ref_out want;
        EXPECT(reference(MIXED, N_MIXED, cases[c].generate_image, cases[c].max_new, &want) == 0, "reference");
        call(&s, MIXED, N_MIXED, cases[c].generate_image, cases[c].max_new, c, &solo[c]);
        EXPECT(solo[c].code == 0, "mixed %d: %s", c, solo[c].msg);
        static int32_t got[4096];
        int n_got = text_ids(&solo[c], got);
        EXPECT(want.n_ids > 0 && n_got == want.n_ids && !memcmp(got, want.ids, sizeof(int32_t) * (size_t)n_got),
               "mixed %d: ids (%d) differ from the in-process model's (%d)", c, n_got, want.n_ids);
        EXPECT(solo[c].n_images == want.n_images, "mixed %d: %d images, want %d", c, solo[c].n_images, want.n_images);
        for (int k = 0; k < want.n_images && k < solo[c].n_images; k++)
            EXPECT(solo[c].n_visual[k] == 64 * 48 && !memcmp(solo[c].visual[k], want.images + (size_t)k * 64 * 48,
                                                             64 * 48 * sizeof(float)),
                   "mixed %d: image %d's visual tokens differ from the in-process model's", c, k);
        free(want.images);
    }
    /* prefix caching (on by default): the second case re-sends the conversation, so it
     * took the first one's blocks, across its first image (rows 5..68), and still
     * equals the in-process model */
    double hits = svc_metric(&s, "metamorph_prefix_cache_hits_total");
    EXPECT(hits >= 80, "the second conversation reused the first one's blocks across the image (%g tokens)", hits);
    /* the same requests at once, with a text-only one: each equals its solo answer */
    msg_spec text_only = {"user", {"Tell me about pipelines"}};
    static img_result text_solo;
    call(&s, &text_only, 1, 0, 30, 0, &text_solo);
    static conc_arg args[6];
    pthread_t th[6];
    for (int i = 0; i < 6; i++) {
        int c = i % 3;
        args[i] = (conc_arg){&s, c < 2 ? cases[c].generate_image : 0, c < 2 ? cases[c].max_new : 30, c == 1,
                             c < 2 ? MIXED : &text_only, c < 2 ? N_MIXED : 1, {0}};
        pthread_create(&th[i], NULL, conc_main, &args[i]);
    }
    for (int i = 0; i < 6; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 6; i++) {
        int c = i % 3;
        EXPECT(args[i].r.code == 0 && same_result(&args[i].r, c < 2 ? &solo[c] : &text_solo),
               "concurrent request %d (kind %d): %s differs from its solo answer", i, c, args[i].r.msg);
        result_free(&args[i].r);
    }
    for (int c = 0; c < 2; c++) result_free(&solo[c]);
    result_free(&text_solo);
    Metamorph__V1__ModelInfo *m = svc_info(&s);
    EXPECT(m && m->kv_blocks_used == 0 && m->requests_running == 0 && m->requests_waiting == 0,
           "after: %d blocks used, %d running", m ? m->kv_blocks_used : -1, m ? m->requests_running : -1);
    if (m) metamorph__v1__model_info__free_unpacked(m, NULL);
    svc_stop(&s);
    return 0;
}

/* ---------------------------------------------------------------- bad images */

/* A PNG whose IHDR (valid CRC) claims width x height pixels, then an empty IDAT. */
static size_t huge_png(uint8_t *b, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 13, 10, 26, 10};
    uint8_t ihdr[17] = {'I', 'H', 'D', 'R', (uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w,
                        (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h, 8, 2, 0, 0, 0};
    memcpy(b, sig, 8);
    b[8] = 0, b[9] = 0, b[10] = 0, b[11] = 13;
    memcpy(b + 12, ihdr, 17);
    uint32_t crc = (uint32_t)crc32(0, ihdr, 17);
    b[29] = (uint8_t)(crc >> 24), b[30] = (uint8_t)(crc >> 16), b[31] = (uint8_t)(crc >> 8), b[32] = (uint8_t)crc;
    /* an empty IDAT: libpng reads the header chunks up to the first IDAT */
    static const uint8_t idat[4] = {'I', 'D', 'A', 'T'};
    memset(b + 33, 0, 4);
    memcpy(b + 37, idat, 4);
    crc = (uint32_t)crc32(0, idat, 4);
    b[41] = (uint8_t)(crc >> 24), b[42] = (uint8_t)(crc >> 16), b[43] = (uint8_t)(crc >> 8), b[44] = (uint8_t)crc;
    return 45;
}

static void expect_code(mm_service *s, const char *what, const msg_spec *m, int n_msgs, const raw_image *raw, int code,
                        const char *needle) {
    size_t len;
    uint8_t *buf = pack_request(m, n_msgs, 0, 8, raw, &len);
    char msg[512] = "";
    int got = mm_client_call(s->cl, "/metamorph.v1.MetaMorph/Generate", buf, len, 30, NULL, NULL, msg, sizeof msg);
    free(buf);
    EXPECT(got == code && strstr(msg, needle), "%s: got %s \"%s\", want %s \"%s\"", what, mm_grpc_code_name(got), msg,
           mm_grpc_code_name(code), needle);
    EXPECT(svc_health(s) == 1, "%s: healthy after", what);
}

static int test_bad(const char *coord, const char *stage) {
    mm_service s;
    EXPECT(svc_start(&s, coord, stage, 2, "\"max_images\": 2") == 0, "start");
    if (!s.cl) return 0;
    size_t n_png = 0, n_jpg = 0;
    char p1[1024], p2[1024];
    uint8_t *png = (uint8_t *)mm_test_read_file(image_path("rgb_37x23.png", p1), &n_png), *jpg = (uint8_t *)mm_test_read_file(image_path("baseline_45x33.jpg", p2), &n_jpg);
    uint8_t huge[64];
    size_t n_huge = huge_png(huge, 100000, 100000);
    raw_image raw[5] = {{(const uint8_t *)"GIF89a not supported", 20}, {png, n_png / 2}, {jpg, n_jpg / 3}, {huge, n_huge},
                        {png, n_png}};
    msg_spec garbage = {"user", {"What is this?", "#0"}};
    expect_code(&s, "not an image", &garbage, 1, raw, 3, "messages[0].parts[1].image: cannot use this image: not a PNG or JPEG");
    msg_spec trunc_png = {"user", {"#1", "What is this?"}};
    expect_code(&s, "truncated PNG", &trunc_png, 1, raw, 3, "messages[0].parts[0].image: cannot use this image");
    msg_spec two[2] = {{"user", {"#4", "x"}}, {"user", {"#2", "x"}}}; /* a good image, then a truncated JPEG */
    expect_code(&s, "truncated JPEG in the second message", two, 2, raw, 3, "messages[1].parts[0].image: cannot use this image");
    msg_spec big = {"user", {"#3"}};
    expect_code(&s, "100000 x 100000 pixels", &big, 1, raw, 3, "100000x100000, over the 4096x4096 limit");
    msg_spec many = {"user", {"#4", "#4", "#4", "three images"}};
    expect_code(&s, "too many images", &many, 1, raw, 3, "3 images, at most 2");
    msg_spec fake = {"user", {"<image> no image here"}};
    expect_code(&s, "an image marker in the text", &fake, 1, raw, 3, "<image> markers");
    /* as the reference's tokenizer_image_token, only "<image>" marks an image: the
     * start/end tokens side by side in a text are text */
    msg_spec pair = {"user", {"<image_start><image_end> no image here"}};
    static img_result p0;
    call(&s, &pair, 1, 0, 4, 0, &p0);
    EXPECT(p0.code == 0 && p0.n_ids == 4, "<image_start><image_end> in a text: %d %s", p0.code, p0.msg);
    result_free(&p0);
    /* still serving images correctly afterwards */
    msg_spec good = {"user", {"@rgb_37x23.png", "What is this?"}};
    static img_result a, b;
    call(&s, &good, 1, 0, 12, 0, &a);
    call(&s, &good, 1, 0, 12, 1, &b);
    EXPECT(a.code == 0 && b.code == 0 && a.n_ids == 12 && same_result(&a, &b), "a good image after the bad ones: %s %s",
           a.msg, b.msg);
    result_free(&a), result_free(&b);
    Metamorph__V1__ModelInfo *m = svc_info(&s);
    EXPECT(m && m->kv_blocks_used == 0 && m->requests_running == 0 && m->requests_waiting == 0, "nothing left behind");
    if (m) metamorph__v1__model_info__free_unpacked(m, NULL);
    free(png), free(jpg);
    int stc = svc_stop(&s);
    EXPECT(WIFEXITED(stc) && WEXITSTATUS(stc) == 0, "clean stop (status %d)", stc);
    return 0;
}

/* mm_vision_select_layer through the service (the encoder pool's mm-encoder): the
 * reference's answers of tests/golden/select_layer/ (a 4-layer SigLIP, select layer -2
 * and 1), each unlike the last layer's, for the service on a model root whose config
 * names that layer. */
static int test_select(const char *coord, const char *stage) {
    char path[1200], line[1 << 15];
    snprintf(path, sizeof path, "%s/tests/golden/select_layer/golden.jsonl", getenv("MM_SOURCE_DIR"));
    FILE *f = fopen(path, "r");
    EXPECT(f != NULL, "%s", path);
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_t *row = json_loads(line, 0, NULL);
        const char *file = json_string_value(json_array_get(json_object_get(row, "images"), 0));
        if (!row || !file || strcmp(file, "images/rgb_300x211.png")) { /* one image per layer is enough here */
            json_decref(row);
            continue;
        }
        int layer = (int)json_integer_value(json_object_get(row, "select_layer"));
        json_t *parts = json_object_get(json_array_get(json_object_get(row, "messages"), 0), "content");
        const char *text = json_string_value(json_object_get(json_array_get(parts, 1), "text"));
        char root[256], vision[1200], cmd[400];
        snprintf(vision, sizeof vision, "%s/tests/golden/select_layer/vision", getenv("MM_SOURCE_DIR"));
        EXPECT(text && mm_test_model_root(vision, layer, root, sizeof root) == 0, "layer %d: model root", layer);
        svc_model = root;
        mm_service s;
        EXPECT(svc_start(&s, coord, stage, 1, "") == 0, "start on select layer %d", layer);
        if (s.cl) {
            msg_spec m = {"user", {"@rgb_300x211.png", text}};
            static img_result r;
            int max_new = (int)json_integer_value(json_object_get(row, "max_new_tokens"));
            call(&s, &m, 1, 0, max_new, 0, &r);
            EXPECT(r.code == 0 && mm_test_ids_equal(json_object_get(row, "greedy_ids"), r.ids, (size_t)r.n_ids),
                   "select layer %d: the service's ids differ from the reference (%d %s)", layer, r.code, r.msg);
            EXPECT(!mm_test_ids_equal(json_object_get(row, "last_layer_ids"), r.ids, (size_t)r.n_ids),
                   "select layer %d: the last layer's answer", layer);
            result_free(&r);
            int stc = svc_stop(&s);
            EXPECT(WIFEXITED(stc) && WEXITSTATUS(stc) == 0, "clean stop (status %d)", stc);
        }
        svc_model = NULL;
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
        EXPECT(system(cmd) == 0, "%s", cmd);
        json_decref(row);
        n++;
    }
    if (f) fclose(f);
    EXPECT(n == 2, "%d select-layer cases", n);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 6 && !strcmp(argv[1], "understand")) test_understand(atoi(argv[2]), argv[3], argv[4], argv[5]);
    else if (argc >= 7 && !strcmp(argv[1], "generate")) test_generate(atoi(argv[2]), argv[3], argv[4], argv[5], argv[6]);
    else if (argc >= 4 && !strcmp(argv[1], "mixed")) test_mixed(argv[2], argv[3]);
    else if (argc >= 4 && !strcmp(argv[1], "bad")) test_bad(argv[2], argv[3]);
    else if (argc >= 4 && !strcmp(argv[1], "select")) test_select(argv[2], argv[3]);
    else {
        fprintf(stderr, "usage: test_images understand|generate|mixed|bad|select ...\n");
        return 2;
    }
    return mm_test_finish(argv[1]);
}
