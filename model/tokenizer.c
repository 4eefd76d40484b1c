/* Byte-level BPE tokenizer for HF tokenizer.json files of the LLaMA-3 kind, plus the
 * LLaMA-3 chat template MetaMorph was trained with (see tokenizer.h). It must give the
 * ids HF `tokenizers` gives, byte for byte; it must not print or exit, and after load the
 * tokenizer is read-only so any number of threads may encode/decode with it at once
 * (every call keeps its scratch space, PCRE2 match data included, to itself). */
#include "model/tokenizer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Larger vocabularies than this are taken as a malformed file, not allocated. */
#define MM_TOKENIZER_MAX_ID (1 << 24)

/* ---------------------------------------------------------------------------------------
 * UTF-8
 * ------------------------------------------------------------------------------------- */

/* Classifies the character at s[0..n) following Unicode's "maximal subpart" rule (as
 * Python and Rust's lossy decoders do): returns its length (1..4) when it is a valid
 * character, 0 when s[0..n) is a valid but truncated prefix of one, and -k when the first
 * k bytes are an invalid sequence (overlong, surrogate, > U+10FFFF, stray byte...). */
static int utf8_char_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    int need;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* > U+10FFFF */
    } else {
        return -1;
    }
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) return 0;
        unsigned char b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return -i;
    }
    return need;
}

/* Code point of the valid character at s (length len from utf8_char_len). */
static uint32_t utf8_decode(const unsigned char *s, int len) {
    static const unsigned char lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t cp = s[0] & lead_mask[len];
    for (int i = 1; i < len; i++) cp = (cp << 6) | (s[i] & 0x3F);
    return cp;
}

static int utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Rust's char::is_whitespace (Unicode White_Space), used by added-token lstrip/rstrip. */
static int unicode_is_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* ---------------------------------------------------------------------------------------
 * GPT-2 ByteLevel map: every byte gets a printable code point. Printable Latin-1 bytes
 * ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) map to themselves; the other 68 bytes get
 * U+0100.. in byte order.
 * ------------------------------------------------------------------------------------- */

#define BYTE_CP_MAX (256 + 68)

static int byte_is_printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

static void byte_level_tables(uint32_t byte_cp[256], int16_t cp_byte[BYTE_CP_MAX]) {
    uint32_t next = 256;
    for (int i = 0; i < BYTE_CP_MAX; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        byte_cp[b] = byte_is_printable(b) ? (uint32_t)b : next++;
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

/* ---------------------------------------------------------------------------------------
 * Hash tables: string -> id (vocab, added tokens) and id pair -> merge (rank, result).
 * Open addressing, linear probing, power-of-two capacity at most half full.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    const char *key; /* owned by the tokenizer's arena */
    uint32_t len;
    int32_t id; /* -1: empty slot */
} str_slot;

typedef struct {
    str_slot *slots;
    size_t mask;
} str_map;

typedef struct {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX: empty slot */
    int32_t rank;
    int32_t new_id;
} merge_slot;

typedef struct {
    merge_slot *slots;
    size_t mask;
} merge_map;

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static size_t table_capacity(size_t n_keys) {
    size_t cap = 16;
    while (cap < 2 * n_keys + 1) cap <<= 1;
    return cap;
}

static mm_status str_map_init(str_map *m, size_t n_keys) {
    size_t cap = table_capacity(n_keys);
    m->slots = malloc(cap * sizeof *m->slots);
    CHECK(CHECK_ALLOC(m->slots));
    for (size_t i = 0; i < cap; i++) m->slots[i].id = -1;
    m->mask = cap - 1;
    return MM_OK;
}

/* Inserts or overwrites (a later duplicate wins, as when HF builds its maps). */
static void str_map_put(str_map *m, const char *key, size_t len, int32_t id) {
    size_t i = hash_bytes(key, len) & m->mask;
    while (m->slots[i].id >= 0 && !(m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0))
        i = (i + 1) & m->mask;
    m->slots[i] = (str_slot){key, (uint32_t)len, id};
}

static int32_t str_map_get(const str_map *m, const char *key, size_t len) {
    if (!m->slots) return -1;
    for (size_t i = hash_bytes(key, len) & m->mask; m->slots[i].id >= 0; i = (i + 1) & m->mask)
        if (m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0) return m->slots[i].id;
    return -1;
}

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

static mm_status merge_map_init(merge_map *m, size_t n_keys) {
    size_t cap = table_capacity(n_keys);
    m->slots = malloc(cap * sizeof *m->slots);
    CHECK(CHECK_ALLOC(m->slots));
    for (size_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    return MM_OK;
}

static void merge_map_put(merge_map *m, uint64_t key, int32_t rank, int32_t new_id) {
    size_t i = hash_u64(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & m->mask;
    m->slots[i] = (merge_slot){key, rank, new_id};
}

static const merge_slot *merge_map_get(const merge_map *m, int32_t a, int32_t b) {
    uint64_t key = pair_key(a, b);
    for (size_t i = hash_u64(key) & m->mask; m->slots[i].key != UINT64_MAX; i = (i + 1) & m->mask)
        if (m->slots[i].key == key) return &m->slots[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * Arena for the token strings (one allocation per 1 MiB, not per token).
 * ------------------------------------------------------------------------------------- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    char data[];
} arena_block;

static char *arena_alloc(arena_block **head, size_t n) {
    arena_block *b = *head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > (1u << 20) ? n : (1u << 20);
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = *head;
        b->used = 0;
        b->cap = cap;
        *head = b;
    }
    char *p = b->data + b->used;
    b->used += n;
    return p;
}

static char *arena_strdup(arena_block **head, const char *s, size_t n) {
    char *p = arena_alloc(head, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---------------------------------------------------------------------------------------
 * The tokenizer
 * ------------------------------------------------------------------------------------- */

typedef struct {
    const char *content;
    size_t len;
    int32_t id;
    unsigned char special, lstrip, rstrip, single_word, normalized;
} added_token;

/* Byte trie over added-token contents for leftmost-longest matching (what HF's
 * Aho-Corasick with MatchKind::LeftmostLongest finds). */
typedef struct {
    int32_t child, sibling, token; /* token: index into added_tokens or -1 */
    unsigned char byte;
} trie_node;

typedef struct {
    trie_node *nodes; /* nodes[0] is the root */
    size_t n, cap;
} added_trie;

struct mm_tokenizer {
    int32_t n_vocab;
    /* Per id, [n_vocab]; NULL for ids no token uses. */
    const char **bytes; /* decoded bytes (NUL-terminated) */
    uint32_t *bytes_len;
    unsigned char *special;

    str_map vocab; /* BPE model vocab, keyed by the ByteLevel string */
    str_map added; /* added token content -> id */
    merge_map merges;
    int ignore_merges;
    int32_t byte_id[256]; /* id of the one-byte token of each byte, -1 if absent */
    uint32_t byte_cp[256];

    added_token *added_tokens;
    size_t n_added;
    added_trie trie[2]; /* [0]: normalized=false tokens (matched first), [1]: normalized=true */

    pcre2_code *split_re; /* pre-tokenizer Split pattern; NULL: the whole span is one piece */
    pcre2_code *word_re; /* "\w" test for single_word tokens; NULL when no token needs it */
    int32_t bos_id;
    int32_t chat_ids[4]; /* ids of the chat-template tokens, see chat_token_names */
    arena_block *arena;
};

static const char *const chat_token_names[4] = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                                "<|eot_id|>"};
enum { CHAT_BEGIN, CHAT_HEADER_START, CHAT_HEADER_END, CHAT_EOT };

void mm_tokenizer_free(mm_tokenizer *tok) {
    if (!tok) return;
    free(tok->bytes);
    free(tok->bytes_len);
    free(tok->special);
    free(tok->vocab.slots);
    free(tok->added.slots);
    free(tok->merges.slots);
    free(tok->added_tokens);
    for (int i = 0; i < 2; i++) free(tok->trie[i].nodes);
    pcre2_code_free(tok->split_re);
    pcre2_code_free(tok->word_re);
    while (tok->arena) {
        arena_block *next = tok->arena->next;
        free(tok->arena);
        tok->arena = next;
    }
    free(tok);
}

/* ---- loading helpers ---- */

static mm_status trie_node_new(added_trie *t, unsigned char byte, int32_t *out) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        trie_node *nodes = realloc(t->nodes, cap * sizeof *nodes);
        CHECK(CHECK_ALLOC(nodes));
        t->nodes = nodes;
        t->cap = cap;
    }
    t->nodes[t->n] = (trie_node){-1, -1, -1, byte};
    *out = (int32_t)t->n++;
    return MM_OK;
}

static int32_t trie_child(const added_trie *t, int32_t node, unsigned char byte) {
    for (int32_t c = t->nodes[node].child; c >= 0; c = t->nodes[c].sibling)
        if (t->nodes[c].byte == byte) return c;
    return -1;
}

static mm_status trie_insert(added_trie *t, const char *s, size_t len, int32_t token) {
    int32_t node = 0;
    if (t->n == 0) CHECK(trie_node_new(t, 0, &node));
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        int32_t c = trie_child(t, node, b);
        if (c < 0) {
            CHECK(trie_node_new(t, b, &c));
            t->nodes[c].sibling = t->nodes[node].child;
            t->nodes[node].child = c;
        }
        node = c;
    }
    t->nodes[node].token = token; /* a later duplicate content wins */
    return MM_OK;
}

/* Length of the longest added token of trie t that starts at s[0..n), token in *token. */
static size_t trie_longest(const added_trie *t, const char *s, size_t n, int32_t *token) {
    size_t best = 0;
    int32_t node = 0;
    *token = -1;
    if (t->n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        node = trie_child(t, node, (unsigned char)s[i]);
        if (node < 0) break;
        if (t->nodes[node].token >= 0) {
            best = i + 1;
            *token = t->nodes[node].token;
        }
    }
    return best;
}

static int json_flag(const json_t *obj, const char *key, int def) {
    const json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* A string member that must be absent, null or "" (features this tokenizer lacks). */
static mm_status require_unset(const json_t *obj, const char *key, const char *path) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v) || json_is_false(v) || (json_is_string(v) && json_string_length(v) == 0) ||
        (json_is_number(v) && json_number_value(v) == 0.0))
        return MM_OK;
    return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: model.%s is set; only plain byte-level BPE is supported", path, key);
}

static mm_status compile_regex(const char *pattern, size_t len, uint32_t extra, const char *path,
                               pcre2_code **out) {
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, PCRE2_UTF | PCRE2_UCP | extra, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: pre-tokenizer regex does not compile at offset %zu: %s", path,
                        (size_t)off, (const char *)msg);
    }
    /* JIT is an optimisation only: without it (no JIT support) the interpreter runs. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return MM_OK;
}

/* Oniguruma (HF tokenizers' regex engine) reads \s as Unicode White_Space; PCRE2 with
 * UCP reads it as \p{Z} + \h + \v, which also holds U+180E MONGOLIAN VOWEL SEPARATOR
 * (format character since Unicode 6.3). LLaMA-3's pattern then splits differently around
 * U+180E (found by fuzzing against HF), so \s and \S are rewritten to the exact set:
 * outside a class to [set] / [^set], inside one to the set's ranges (\S inside a class
 * keeps PCRE2's meaning). *out is malloc'd. What stays different: code points assigned
 * after the Unicode version of PCRE2's tables (10.42: Unicode 14) are \p{Cn} here but
 * letters/digits to a newer Oniguruma (e.g. CJK Extension H, U+31350..U+323AF). */
#define WHITE_SPACE_SET                                                                                            \
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

static mm_status adapt_pattern(const char *p, size_t len, char **out, size_t *out_len) {
    const size_t set_len = sizeof WHITE_SPACE_SET - 1;
    char *o = malloc(len * (set_len + 3) + 1);
    CHECK(CHECK_ALLOC(o));
    size_t m = 0;
    int in_class = 0;
    for (size_t i = 0; i < len;) {
        char c = p[i];
        if (c == '\\' && i + 1 < len) {
            char d = p[i + 1];
            if (d == 's' || (d == 'S' && !in_class)) {
                if (!in_class) o[m++] = '[';
                if (d == 'S') o[m++] = '^';
                memcpy(o + m, WHITE_SPACE_SET, set_len);
                m += set_len;
                if (!in_class) o[m++] = ']';
            } else {
                o[m++] = c;
                o[m++] = d;
            }
            i += 2;
            continue;
        }
        o[m++] = c;
        i++;
        if (!in_class && c == '[') {
            in_class = 1;
            if (i < len && p[i] == '^') o[m++] = p[i++];
            if (i < len && p[i] == ']') o[m++] = p[i++]; /* a leading ']' is literal */
        } else if (in_class && c == '[' && i < len && p[i] == ':') {
            const char *end = strstr(p + i, ":]"); /* POSIX class [:name:] */
            size_t n = end && (size_t)(end - p) < len ? (size_t)(end - p) + 2 - i : 0;
            memcpy(o + m, p + i, n);
            m += n;
            i += n;
        } else if (in_class && c == ']') {
            in_class = 0;
        }
    }
    o[m] = '\0';
    *out = o;
    *out_len = m;
    return MM_OK;
}

/* pre_tokenizer: Sequence[Split(pattern, Isolated), ByteLevel(use_regex=false)], or the
 * same items alone. The Split pattern is the one in the file; PCRE2 has all the
 * constructs LLaMA-3's uses ((?i:...), \p{L}, \p{N}, (?!\S)), only \s is adapted. */
static mm_status load_pre_tokenizer(mm_tokenizer *tok, const json_t *pt, const char *path) {
    const json_t *items = pt;
    json_t *single = NULL;
    int byte_level = 0;
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (!type)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: pre_tokenizer missing; byte-level BPE needs ByteLevel", path);
    if (strcmp(type, "Sequence") == 0) {
        items = json_object_get(pt, "pretokenizers");
        if (!json_is_array(items))
            return MM_ERROR(MM_ERR_FORMAT, "%s: pre_tokenizer.pretokenizers is not an array", path);
    } else {
        single = json_array();
        CHECK(CHECK_ALLOC(single));
        json_array_append(single, (json_t *)pt);
        items = single;
    }
    mm_status rc = MM_OK;
    size_t i;
    const json_t *it;
    json_array_foreach(items, i, it) {
        const char *t = json_string_value(json_object_get(it, "type"));
        if (t && strcmp(t, "Split") == 0 && !tok->split_re) {
            const json_t *pat = json_object_get(it, "pattern");
            const json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
            const char *behavior = json_string_value(json_object_get(it, "behavior"));
            if ((!json_is_string(re) && !json_is_string(lit)) || !behavior || strcmp(behavior, "Isolated") != 0 ||
                json_flag(it, "invert", 0)) {
                rc = MM_ERROR(MM_ERR_UNSUPPORTED,
                              "%s: only Split(Regex|String, behavior=Isolated, invert=false) is supported", path);
                break;
            }
            if (json_is_string(re)) {
                char *adapted = NULL;
                size_t n = 0;
                rc = adapt_pattern(json_string_value(re), json_string_length(re), &adapted, &n);
                if (rc == MM_OK) rc = compile_regex(adapted, n, 0, path, &tok->split_re);
                free(adapted);
            } else {
                rc = compile_regex(json_string_value(lit), json_string_length(lit), PCRE2_LITERAL, path,
                                   &tok->split_re);
            }
            if (rc != MM_OK) break;
        } else if (t && strcmp(t, "ByteLevel") == 0 && !json_flag(it, "use_regex", 1) &&
                   !json_flag(it, "add_prefix_space", 0)) {
            byte_level = 1;
        } else {
            rc = MM_ERROR(MM_ERR_UNSUPPORTED, "%s: pre-tokenizer %s (item %zu) is not supported", path, t ? t : "?",
                          i);
            break;
        }
    }
    json_decref(single);
    if (rc == MM_OK && !byte_level)
        rc = MM_ERROR(MM_ERR_UNSUPPORTED,
                      "%s: pre_tokenizer has no ByteLevel(use_regex=false, add_prefix_space=false)", path);
    return rc;
}

/* BOS: the first SpecialToken of a TemplateProcessing "single" template that comes
 * before the sequence, looked for in post_processor or inside a Sequence of them. */
static int32_t find_bos(const json_t *pp) {
    const char *type = json_string_value(json_object_get(pp, "type"));
    if (!type) return -1;
    if (strcmp(type, "Sequence") == 0) {
        size_t i;
        const json_t *p;
        json_array_foreach(json_object_get(pp, "processors"), i, p) {
            int32_t id = find_bos(p);
            if (id >= 0) return id;
        }
        return -1;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return -1;
    size_t i;
    const json_t *piece;
    json_array_foreach(json_object_get(pp, "single"), i, piece) {
        const json_t *sp = json_object_get(piece, "SpecialToken");
        if (!sp) return -1; /* the sequence comes first: no BOS */
        const char *name = json_string_value(json_object_get(sp, "id"));
        const json_t *st = name ? json_object_get(json_object_get(pp, "special_tokens"), name) : NULL;
        const json_t *ids = json_object_get(st, "ids");
        if (json_is_integer(json_array_get(ids, 0))) return (int32_t)json_integer_value(json_array_get(ids, 0));
        return -1;
    }
    return -1;
}

/* Decodes a ByteLevel vocab string to bytes like HF's ByteLevel decoder: every char maps
 * back to its byte, or, if any char is outside the map, the string's own bytes. */
static mm_status set_token_bytes(mm_tokenizer *tok, int32_t id, const char *s, size_t n, int byte_level,
                                 const int16_t cp_byte[BYTE_CP_MAX]) {
    char *out = arena_alloc(&tok->arena, n + 1);
    CHECK(CHECK_ALLOC(out));
    size_t m = 0;
    for (size_t i = 0; byte_level && i < n;) {
        int len = utf8_char_len((const unsigned char *)s + i, n - i);
        uint32_t cp = len > 0 ? utf8_decode((const unsigned char *)s + i, len) : BYTE_CP_MAX;
        if (cp >= BYTE_CP_MAX || cp_byte[cp] < 0) {
            byte_level = 0;
            break;
        }
        out[m++] = (char)cp_byte[cp];
        i += (size_t)len;
    }
    if (!byte_level) {
        memcpy(out, s, n);
        m = n;
    }
    out[m] = '\0';
    tok->bytes[id] = out;
    tok->bytes_len[id] = (uint32_t)m;
    return MM_OK;
}

static mm_status read_id(const json_t *v, const char *path, const char *what, int32_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MM_TOKENIZER_MAX_ID)
        return MM_ERROR(MM_ERR_FORMAT, "%s: %s has no valid id", path, what);
    *out = (int32_t)json_integer_value(v);
    return MM_OK;
}

/* merges: "a b" strings or ["a", "b"] pairs; rank = position. */
static mm_status load_merges(mm_tokenizer *tok, const json_t *merges, const char *path) {
    size_t n = json_array_size(merges);
    CHECK(merge_map_init(&tok->merges, n));
    char *buf = NULL;
    size_t buf_cap = 0;
    mm_status rc = MM_OK;
    for (size_t r = 0; r < n && rc == MM_OK; r++) {
        const json_t *m = json_array_get(merges, r);
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = memchr(a, ' ', json_string_length(m));
            if (!sp || memchr(sp + 1, ' ', json_string_length(m) - (size_t)(sp + 1 - a))) {
                rc = MM_ERROR(MM_ERR_FORMAT, "%s: merge %zu is not \"a b\"", path, r);
                break;
            }
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = json_string_length(m) - la - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            la = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            lb = json_string_length(json_array_get(m, 1));
        } else {
            rc = MM_ERROR(MM_ERR_FORMAT, "%s: merge %zu is neither \"a b\" nor [a, b]", path, r);
            break;
        }
        if (la + lb > buf_cap) {
            buf_cap = 2 * (la + lb);
            char *nb = realloc(buf, buf_cap);
            if ((rc = CHECK_ALLOC(nb)) != MM_OK) break;
            buf = nb;
        }
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ia = str_map_get(&tok->vocab, a, la), ib = str_map_get(&tok->vocab, b, lb);
        int32_t inew = str_map_get(&tok->vocab, buf, la + lb);
        if (ia < 0 || ib < 0 || inew < 0)
            rc = MM_ERROR(MM_ERR_FORMAT, "%s: merge %zu (\"%.*s\" + \"%.*s\") uses a token missing from the vocab",
                          path, r, (int)la, a, (int)lb, b);
        else
            merge_map_put(&tok->merges, pair_key(ia, ib), (int32_t)r, inew);
    }
    free(buf);
    return rc;
}

static mm_status load_added_tokens(mm_tokenizer *tok, const json_t *added, const char *path) {
    size_t i;
    const json_t *a;
    json_array_foreach(added, i, a) {
        added_token *t = &tok->added_tokens[tok->n_added];
        const json_t *content = json_object_get(a, "content");
        char what[64];
        snprintf(what, sizeof what, "added_tokens[%zu]", i);
        CHECK(read_id(json_object_get(a, "id"), path, what, &t->id));
        if (!json_is_string(content)) return MM_ERROR(MM_ERR_FORMAT, "%s: %s has no content", path, what);
        t->len = json_string_length(content);
        t->content = arena_strdup(&tok->arena, json_string_value(content), t->len);
        CHECK(CHECK_ALLOC(t->content));
        t->special = (unsigned char)json_flag(a, "special", 0);
        t->lstrip = (unsigned char)json_flag(a, "lstrip", 0);
        t->rstrip = (unsigned char)json_flag(a, "rstrip", 0);
        t->single_word = (unsigned char)json_flag(a, "single_word", 0);
        t->normalized = (unsigned char)json_flag(a, "normalized", !t->special);
        /* Added tokens decode as their content (for LLaMA-3's ASCII tokens this is also
         * what HF's ByteLevel decoder gives). */
        tok->bytes[t->id] = t->content;
        tok->bytes_len[t->id] = (uint32_t)t->len;
        tok->special[t->id] = t->special;
        str_map_put(&tok->added, t->content, t->len, t->id);
        if (t->len == 0) continue; /* HF never matches an empty token */
        CHECK(trie_insert(&tok->trie[t->normalized ? 1 : 0], t->content, t->len, (int32_t)tok->n_added));
        tok->n_added++;
    }
    return MM_OK;
}

static mm_status tokenizer_build(mm_tokenizer *tok, json_t *root, const char *path) {
    const json_t *model = json_object_get(root, "model");
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    const json_t *added = json_object_get(root, "added_tokens");
    const json_t *normalizer = json_object_get(root, "normalizer");
    const char *type = json_string_value(json_object_get(model, "type"));

    if (!type || strcmp(type, "BPE") != 0)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: model.type is %s, only BPE is supported", path,
                        type ? type : "missing");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return MM_ERROR(MM_ERR_FORMAT, "%s: model.vocab must be an object and model.merges an array", path);
    if (added && !json_is_array(added)) return MM_ERROR(MM_ERR_FORMAT, "%s: added_tokens is not an array", path);
    if (normalizer && !json_is_null(normalizer))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: a normalizer is set; LLaMA-3 tokenizers have none", path);
    static const char *const unset[] = {"unk_token", "byte_fallback", "continuing_subword_prefix",
                                        "end_of_word_suffix", "dropout"};
    for (size_t i = 0; i < sizeof unset / sizeof unset[0]; i++) CHECK(require_unset(model, unset[i], path));
    tok->ignore_merges = json_flag(model, "ignore_merges", 0);

    /* Id space: max id over vocab and added tokens, + 1. */
    int32_t max_id = -1, id;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        CHECK(read_id(v, path, "a vocab entry", &id));
        if (id > max_id) max_id = id;
    }
    size_t i;
    json_array_foreach(added, i, v) {
        if (read_id(json_object_get(v, "id"), path, "an added token", &id) == MM_OK && id > max_id) max_id = id;
    }
    tok->n_vocab = max_id + 1;
    size_t n = (size_t)tok->n_vocab;
    tok->bytes = calloc(n ? n : 1, sizeof *tok->bytes);
    tok->bytes_len = calloc(n ? n : 1, sizeof *tok->bytes_len);
    tok->special = calloc(n ? n : 1, 1);
    tok->added_tokens = calloc(json_array_size(added) + 1, sizeof *tok->added_tokens);
    CHECK(CHECK_ALLOC(tok->bytes));
    CHECK(CHECK_ALLOC(tok->bytes_len));
    CHECK(CHECK_ALLOC(tok->special));
    CHECK(CHECK_ALLOC(tok->added_tokens));
    CHECK(str_map_init(&tok->vocab, json_object_size(vocab)));
    CHECK(str_map_init(&tok->added, json_array_size(added)));

    int16_t cp_byte[BYTE_CP_MAX];
    byte_level_tables(tok->byte_cp, cp_byte);
    json_object_foreach((json_t *)vocab, key, v) {
        size_t len = strlen(key);
        const char *s = arena_strdup(&tok->arena, key, len);
        CHECK(CHECK_ALLOC(s));
        id = (int32_t)json_integer_value(v);
        str_map_put(&tok->vocab, s, len, id);
        CHECK(set_token_bytes(tok, id, s, len, 1, cp_byte));
    }
    for (int b = 0; b < 256; b++) {
        char c[4];
        tok->byte_id[b] = str_map_get(&tok->vocab, c, (size_t)utf8_encode(tok->byte_cp[b], c));
    }
    CHECK(load_merges(tok, merges, path));
    CHECK(load_added_tokens(tok, added, path));
    for (i = 0; i < tok->n_added; i++) {
        if (tok->added_tokens[i].single_word && !tok->word_re) {
            /* Rust regex \w, which HF uses for single_word: Alphabetic, marks, decimal
             * digits, connector punctuation, joiners. */
            static const char word[] = "[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
            CHECK(compile_regex(word, sizeof word - 1, PCRE2_ANCHORED, path, &tok->word_re));
        }
    }
    CHECK(load_pre_tokenizer(tok, json_object_get(root, "pre_tokenizer"), path));
    tok->bos_id = find_bos(json_object_get(root, "post_processor"));
    if (tok->bos_id >= tok->n_vocab)
        return MM_ERROR(MM_ERR_FORMAT, "%s: BOS id %d is out of range", path, tok->bos_id);
    for (int k = 0; k < 4; k++)
        tok->chat_ids[k] = str_map_get(&tok->added, chat_token_names[k], strlen(chat_token_names[k]));
    return MM_OK;
}

mm_status mm_tokenizer_load(const char *path, mm_tokenizer **out) {
    if (!path || !out) return MM_ERROR(MM_ERR_INVALID, "mm_tokenizer_load: NULL argument");
    *out = NULL;
    if (access(path, R_OK) != 0) return MM_ERROR(MM_ERR_IO, "%s: cannot read tokenizer file", path);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!root)
        return MM_ERROR(MM_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", path, jerr.line, jerr.column, jerr.text);
    mm_tokenizer *tok = calloc(1, sizeof *tok);
    mm_status rc = CHECK_ALLOC(tok);
    if (rc == MM_OK)
        rc = json_is_object(root) ? tokenizer_build(tok, root, path)
                                  : MM_ERROR(MM_ERR_FORMAT, "%s: top level is not an object", path);
    json_decref(root);
    if (rc != MM_OK) {
        mm_tokenizer_free(tok);
        return rc;
    }
    *out = tok;
    return MM_OK;
}

int32_t mm_tokenizer_n_vocab(const mm_tokenizer *tok) { return tok->n_vocab; }

const char *mm_tokenizer_unicode_version(void) {
    static char version[32]; /* the same bytes from every thread: a benign race */
    if (!version[0] && pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, version) < 0) snprintf(version, sizeof version, "?");
    return version;
}

int32_t mm_tokenizer_token_id(const mm_tokenizer *tok, const char *token) {
    if (!token) return -1;
    size_t len = strlen(token);
    int32_t id = str_map_get(&tok->added, token, len);
    return id >= 0 ? id : str_map_get(&tok->vocab, token, len);
}

int32_t mm_tokenizer_bos_id(const mm_tokenizer *tok) { return tok->bos_id; }

const char *mm_tokenizer_token_bytes(const mm_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->n_vocab || !tok->bytes[id]) return NULL;
    if (len) *len = tok->bytes_len[id];
    return tok->bytes[id];
}

int mm_tokenizer_is_special(const mm_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_vocab && tok->special[id];
}

/* ---------------------------------------------------------------------------------------
 * Encoding
 * ------------------------------------------------------------------------------------- */

typedef struct {
    int32_t *ids;
    size_t n, cap;
} id_vec;

static mm_status id_vec_push(id_vec *v, int32_t id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        int32_t *ids = realloc(v->ids, cap * sizeof *ids);
        CHECK(CHECK_ALLOC(ids));
        v->ids = ids;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return MM_OK;
}

typedef struct {
    int32_t rank, pos, new_id;
} bpe_merge;

/* Per-call scratch, grown as needed and reused across pieces. */
typedef struct {
    char *mapped; /* [2 * piece bytes] ByteLevel string of the piece */
    int32_t *sym, *prev, *next; /* [piece bytes] BPE symbols as a linked list */
    bpe_merge *heap; /* [3 * piece bytes] candidate merges */
    size_t cap; /* piece bytes the buffers hold */
    pcre2_match_data *md;
} enc_work;

static void enc_work_free(enc_work *w) {
    free(w->mapped);
    free(w->sym);
    free(w->prev);
    free(w->next);
    free(w->heap);
    pcre2_match_data_free(w->md);
}

static mm_status enc_work_reserve(enc_work *w, size_t n) {
    if (n <= w->cap) return MM_OK;
    size_t cap = n < 256 ? 256 : n + n / 2;
    char *mapped = realloc(w->mapped, 2 * cap);
    if (mapped) w->mapped = mapped;
    int32_t *sym = realloc(w->sym, cap * sizeof *sym);
    if (sym) w->sym = sym;
    int32_t *prev = realloc(w->prev, cap * sizeof *prev);
    if (prev) w->prev = prev;
    int32_t *next = realloc(w->next, cap * sizeof *next);
    if (next) w->next = next;
    bpe_merge *heap = realloc(w->heap, 3 * cap * sizeof *heap);
    if (heap) w->heap = heap;
    if (!mapped || !sym || !prev || !next || !heap)
        return MM_ERROR(MM_ERR_NOMEM, "out of memory for a %zu-byte piece", n);
    w->cap = cap;
    return MM_OK;
}

/* Min-heap on (rank, pos): lowest rank first, leftmost on ties, as HF's BPE word does. */
static int merge_less(const bpe_merge *a, const bpe_merge *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(bpe_merge *h, size_t *n, bpe_merge m) {
    size_t i = (*n)++;
    while (i > 0 && merge_less(&m, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = m;
}

static bpe_merge heap_pop(bpe_merge *h, size_t *n) {
    bpe_merge top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && merge_less(&h[c + 1], &h[c])) c++;
        if (!merge_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

static void bpe_push_pair(const mm_tokenizer *tok, enc_work *w, size_t *nh, int32_t left) {
    if (left < 0 || w->next[left] < 0) return;
    const merge_slot *m = merge_map_get(&tok->merges, w->sym[left], w->sym[w->next[left]]);
    if (m) heap_push(w->heap, nh, (bpe_merge){m->rank, left, m->new_id});
}

/* One pre-tokenized piece -> ids: ByteLevel map, whole-piece lookup (ignore_merges),
 * else BPE merges by rank with a heap: O(n log n) even for a 1 MB piece. */
static mm_status encode_piece(const mm_tokenizer *tok, const char *s, size_t n, enc_work *w, id_vec *out) {
    CHECK(enc_work_reserve(w, n));
    if (tok->ignore_merges) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += (size_t)utf8_encode(tok->byte_cp[(unsigned char)s[i]], w->mapped + m);
        int32_t id = str_map_get(&tok->vocab, w->mapped, m);
        if (id >= 0) return id_vec_push(out, id);
    }
    /* Bytes whose one-char token is missing are dropped (HF BPE without unk_token). */
    int32_t n_sym = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tok->byte_id[(unsigned char)s[i]];
        if (id < 0) continue;
        w->sym[n_sym] = id;
        w->prev[n_sym] = n_sym - 1;
        w->next[n_sym] = n_sym + 1;
        n_sym++;
    }
    if (n_sym == 0) return MM_OK;
    w->next[n_sym - 1] = -1;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < n_sym; i++) bpe_push_pair(tok, w, &nh, i);
    while (nh > 0) {
        bpe_merge top = heap_pop(w->heap, &nh);
        int32_t left = top.pos, right = w->next[left];
        /* Stale entries: the left symbol was absorbed (sym -1) or the pair changed. */
        if (w->sym[left] < 0 || right < 0) continue;
        const merge_slot *m = merge_map_get(&tok->merges, w->sym[left], w->sym[right]);
        if (!m || m->new_id != top.new_id) continue;
        w->sym[left] = top.new_id;
        w->sym[right] = -1;
        w->next[left] = w->next[right];
        if (w->next[right] >= 0) w->prev[w->next[right]] = left;
        bpe_push_pair(tok, w, &nh, w->prev[left]);
        bpe_push_pair(tok, w, &nh, left);
    }
    for (int32_t i = 0; i >= 0; i = w->next[i]) CHECK(id_vec_push(out, w->sym[i]));
    return MM_OK;
}

/* A span without added tokens: the Split regex cuts it into pieces (matches and the gaps
 * between them, behaviour "Isolated"), each piece goes through BPE. */
static mm_status encode_span(const mm_tokenizer *tok, const char *s, size_t n, enc_work *w, id_vec *out) {
    if (n == 0) return MM_OK;
    if (!tok->split_re) return encode_piece(tok, s, n, w, out);
    if (!w->md) {
        w->md = pcre2_match_data_create_from_pattern(tok->split_re, NULL);
        CHECK(CHECK_ALLOC(w->md));
    }
    size_t gap = 0, pos = 0;
    while (pos < n) {
        int rc = pcre2_match(tok->split_re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, w->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return MM_ERROR(MM_ERR_INTERNAL, "pre-tokenizer regex failed at byte %zu: %s", pos, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { /* empty match: step one character, it stays in the gap */
            int len = utf8_char_len((const unsigned char *)s + ms, n - ms);
            pos = ms + (size_t)(len > 0 ? len : 1);
            continue;
        }
        if (ms > gap) CHECK(encode_piece(tok, s + gap, ms - gap, w, out));
        CHECK(encode_piece(tok, s + ms, me - ms, w, out));
        gap = pos = me;
    }
    if (gap < n) CHECK(encode_piece(tok, s + gap, n - gap, w, out));
    return MM_OK;
}

/* Start of the character before s[pos] (pos > floor, s valid UTF-8 from floor on). */
static size_t utf8_prev(const char *s, size_t floor, size_t pos) {
    size_t c = pos - 1;
    while (c > floor && ((unsigned char)s[c] & 0xC0) == 0x80) c--;
    return c;
}

/* HF's single_word rule: no \w character right before or right after the token. */
static int single_word_ok(const mm_tokenizer *tok, const char *s, size_t n, size_t start, size_t stop) {
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return 0;
    int word_before = start > 0 && pcre2_match(tok->word_re, (PCRE2_SPTR)s, n, utf8_prev(s, 0, start),
                                               PCRE2_NO_UTF_CHECK, md, NULL) > 0;
    int word_after =
        stop < n && pcre2_match(tok->word_re, (PCRE2_SPTR)s, n, stop, PCRE2_NO_UTF_CHECK, md, NULL) > 0;
    pcre2_match_data_free(md);
    return !word_before && !word_after;
}

/* Splits on added tokens like HF's AddedVocabulary: pass 0 matches the normalized=false
 * tokens on the raw text, pass 1 the normalized=true ones on what is left (there is no
 * normalizer, so both see the same bytes). Leftmost-longest; a special token matched
 * while !allow_special is skipped but still consumes its span, as HF's
 * encode_special_tokens does. */
static mm_status encode_added(const mm_tokenizer *tok, const char *s, size_t n, int pass, int allow_special,
                              enc_work *w, id_vec *out) {
    const added_trie *t = &tok->trie[pass];
    if (t->n == 0)
        return pass == 0 ? encode_added(tok, s, n, 1, allow_special, w, out) : encode_span(tok, s, n, w, out);
    size_t gap = 0, i = 0;
    while (i < n) {
        int32_t k;
        size_t len = trie_longest(t, s + i, n - i, &k);
        if (len == 0) {
            i++;
            continue;
        }
        const added_token *at = &tok->added_tokens[k];
        size_t start = i, stop = i + len;
        i = stop;
        if ((at->special && !allow_special) || (at->single_word && !single_word_ok(tok, s, n, start, stop)))
            continue;
        while (at->lstrip && start > gap) { /* swallow whitespace before the token */
            size_t c = utf8_prev(s, gap, start);
            int cl = utf8_char_len((const unsigned char *)s + c, n - c);
            if (cl <= 0 || !unicode_is_space(utf8_decode((const unsigned char *)s + c, cl))) break;
            start = c;
        }
        while (at->rstrip && stop < n) { /* and after it */
            int cl = utf8_char_len((const unsigned char *)s + stop, n - stop);
            if (cl <= 0 || !unicode_is_space(utf8_decode((const unsigned char *)s + stop, cl))) break;
            stop += (size_t)cl;
        }
        if (start > gap) {
            if (pass == 0)
                CHECK(encode_added(tok, s + gap, start - gap, 1, allow_special, w, out));
            else
                CHECK(encode_span(tok, s + gap, start - gap, w, out));
        }
        CHECK(id_vec_push(out, at->id));
        gap = i = stop;
    }
    if (gap < n) {
        if (pass == 0)
            CHECK(encode_added(tok, s + gap, n - gap, 1, allow_special, w, out));
        else
            CHECK(encode_span(tok, s + gap, n - gap, w, out));
    }
    return MM_OK;
}

static mm_status check_utf8(const char *text, size_t len) {
    for (size_t i = 0; i < len;) {
        int l = utf8_char_len((const unsigned char *)text + i, len - i);
        if (l <= 0)
            return MM_ERROR(MM_ERR_INVALID, "text is not valid UTF-8 (byte 0x%02x at offset %zu)",
                            (unsigned char)text[i], i);
        i += (size_t)l;
    }
    return MM_OK;
}

/* Validates text and appends its ids to out. */
static mm_status encode_append(const mm_tokenizer *tok, const char *text, size_t len, int allow_special,
                               enc_work *w, id_vec *out) {
    CHECK(check_utf8(text, len));
    return encode_added(tok, text, len, 0, allow_special, w, out);
}

mm_status mm_tokenizer_encode(const mm_tokenizer *tok, const char *text, size_t len, int allow_special,
                              int32_t **ids, size_t *n_ids) {
    if (!tok || (!text && len) || !ids || !n_ids)
        return MM_ERROR(MM_ERR_INVALID, "mm_tokenizer_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    enc_work w = {0};
    id_vec out = {0};
    mm_status rc = encode_append(tok, text, len, allow_special, &w, &out);
    enc_work_free(&w);
    if (rc != MM_OK) {
        free(out.ids);
        return rc;
    }
    *ids = out.ids;
    *n_ids = out.n;
    return MM_OK;
}

/* ---------------------------------------------------------------------------------------
 * Decoding
 * ------------------------------------------------------------------------------------- */

static long detok_emit(const unsigned char *s, size_t n, int final, char *out, size_t cap, size_t *m);

/* Like transformers' decode: the tokens' bytes, then UTF-8 with invalid sequences
 * replaced by U+FFFD (Python's errors="replace"), so the result is always valid. */
mm_status mm_tokenizer_decode(const mm_tokenizer *tok, const int32_t *ids, size_t n, int skip_special, char **out,
                              size_t *out_len) {
    if (!tok || (!ids && n) || !out) return MM_ERROR(MM_ERR_INVALID, "mm_tokenizer_decode: NULL argument");
    *out = NULL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!mm_tokenizer_token_bytes(tok, ids[i], NULL))
            return MM_ERROR(MM_ERR_INVALID, "decode: token id %d at position %zu is not in the vocabulary (%d ids)",
                            ids[i], i, tok->n_vocab);
        if (!(skip_special && tok->special[ids[i]])) total += tok->bytes_len[ids[i]];
    }
    unsigned char *raw = malloc(total + 1);
    char *s = malloc(3 * total + 1); /* each invalid byte may become 3 bytes */
    if (!raw || !s) {
        free(raw), free(s);
        return MM_ERROR(MM_ERR_NOMEM, "decode of %zu bytes", total);
    }
    size_t r = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && tok->special[ids[i]]) continue;
        memcpy(raw + r, tok->bytes[ids[i]], tok->bytes_len[ids[i]]);
        r += tok->bytes_len[ids[i]];
    }
    detok_emit(raw, r, 1, s, 3 * total + 1, &m);
    free(raw);
    s[m] = '\0';
    *out = s;
    if (out_len) *out_len = m;
    return MM_OK;
}

/* Streaming: the output is always valid UTF-8. Complete characters pass through as they
 * are; an incomplete tail waits in d->pending (at most 3 bytes); a sequence that can never
 * become valid is replaced by U+FFFD (one per maximal subpart, like Python's
 * errors="replace"). The concatenated output always equals mm_tokenizer_decode;
 * invalid bytes make it up to 3x longer than the input. On -1
 * (cap too small) the state is unchanged, so the caller can retry with more room. */

void mm_detok_init(mm_detok *d, int skip_special) {
    memset(d, 0, sizeof *d);
    d->skip_special = skip_special;
}

/* Writes the complete characters of s[0..n) to out+*m; returns the bytes consumed (an
 * incomplete tail is left unless final), or -1 when out is full. */
static long detok_emit(const unsigned char *s, size_t n, int final, char *out, size_t cap, size_t *m) {
    static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    size_t i = 0;
    while (i < n) {
        int l = utf8_char_len(s + i, n - i);
        if (l == 0 && !final) break;
        const char *src = l > 0 ? (const char *)s + i : replacement;
        size_t k = l > 0 ? (size_t)l : 3;
        if (cap - *m < k) return -1;
        memcpy(out + *m, src, k);
        *m += k;
        i += l > 0 ? (size_t)l : l < 0 ? (size_t)-l : n - i;
    }
    return (long)i;
}

int mm_detok_push(mm_detok *d, const mm_tokenizer *tok, int32_t id, char *out, size_t cap) {
    size_t len = 0;
    const unsigned char *b = (const unsigned char *)mm_tokenizer_token_bytes(tok, id, &len);
    if (!b || (d->skip_special && tok->special[id]) || len == 0) return 0;
    /* Characters that start in pending end within its bytes + the next few of b, so a
     * small joined head settles them; then the rest of b is scanned in place. */
    unsigned char head[16];
    size_t np = (size_t)d->n_pending, nh = len < sizeof head - np ? len : sizeof head - np;
    memcpy(head, d->pending, np);
    memcpy(head + np, b, nh);
    size_t m = 0;
    long used = detok_emit(head, np + nh, 0, out, cap, &m);
    if (used < 0) return -1;
    size_t done = (size_t)used; /* bytes of head + b consumed */
    if (nh < len && done >= np) {
        long more = detok_emit(b + (done - np), len - (done - np), 0, out, cap, &m);
        if (more < 0) return -1;
        done += (size_t)more;
    }
    size_t rest = np + len - done; /* incomplete tail, < 4 bytes */
    for (size_t i = 0; i < rest; i++) {
        size_t at = done + i;
        d->pending[i] = at < np ? d->pending[at] : b[at - np];
    }
    d->n_pending = (int)rest;
    return (int)m;
}

int mm_detok_flush(mm_detok *d, char *out, size_t cap) {
    size_t m = 0;
    if (detok_emit(d->pending, (size_t)d->n_pending, 1, out, cap, &m) < 0) return -1;
    d->n_pending = 0;
    return (int)m;
}

/* ---------------------------------------------------------------------------------------
 * Chat template
 * ------------------------------------------------------------------------------------- */

/* MetaMorph builds the prompt string with conv_llama_3.get_prompt():
 *   "<|begin_of_text|>" + per message ROLE_HEADER + text + "<|eot_id|>" (text non-empty)
 *                                   or ROLE_HEADER alone              (text empty/None)
 * with ROLE_HEADER = "<|start_header_id|>ROLE<|end_header_id|>\n", the generation
 * prompt being the assistant header alone, and tokenizes it with tokenizer_image_token:
 * HF tokenizer(prompt) with its defaults, i.e. special tokens recognised anywhere in the
 * string (message text included) and the post-processor's BOS in front. That BOS is kept
 * and the prompt's own "<|begin_of_text|>" follows it, so the ids start with BOS BOS;
 * we reproduce that, since the model was trained on it.
 *
 * Because special tokens split the string, each message's text is tokenized together
 * with the "\n" that ends its header (it matters: "\n\nx" is not "\n" + "\nx"), which is
 * the span encoded below. "<image>" (IMAGE_TOKEN_INDEX) is not split out: the caller puts
 * the image embeddings between the <image_start> and <image_end> ids, which gives the
 * reference ids with the -200 placeholder removed, since both neighbours of "<image>"
 * are special tokens in MetaMorph's prompts. */
/* text[0..len) encoded with every occurrence of marker (NULL: none) replaced by
 * marker_id, each piece encoded on its own (*n_marked counts the markers). */
static mm_status encode_marked(const mm_tokenizer *tok, const char *text, size_t len, const char *marker,
                               int32_t marker_id, enc_work *w, id_vec *out, int *n_marked) {
    size_t mlen = marker ? strlen(marker) : 0;
    for (;;) {
        const char *at = mlen ? memmem(text, len, marker, mlen) : NULL;
        size_t piece = at ? (size_t)(at - text) : len;
        CHECK(encode_append(tok, text, piece, 1, w, out));
        if (!at) return MM_OK;
        CHECK(id_vec_push(out, marker_id));
        (*n_marked)++;
        text += piece + mlen, len -= piece + mlen;
    }
}

mm_status mm_chat_encode(const mm_tokenizer *tok, const mm_chat_message *msgs, size_t n_msgs,
                         int add_generation_prompt, int32_t **ids, size_t *n_ids) {
    int n_marked;
    return mm_chat_encode_marked(tok, msgs, n_msgs, add_generation_prompt, NULL, 0, ids, n_ids, &n_marked);
}

mm_status mm_chat_encode_marked(const mm_tokenizer *tok, const mm_chat_message *msgs, size_t n_msgs,
                                int add_generation_prompt, const char *marker, int32_t marker_id, int32_t **ids,
                                size_t *n_ids, int *n_marked) {
    if (!tok || (!msgs && n_msgs) || !ids || !n_ids || !n_marked)
        return MM_ERROR(MM_ERR_INVALID, "mm_chat_encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    *n_marked = 0;
    for (int k = 0; k < 4; k++)
        if (tok->chat_ids[k] < 0)
            return MM_ERROR(MM_ERR_UNSUPPORTED, "tokenizer has no %s token; the LLaMA-3 chat template needs it",
                            chat_token_names[k]);
    enc_work w = {0};
    id_vec out = {0};
    char *span = NULL;
    mm_status rc = MM_OK;
    if (tok->bos_id >= 0) CHECK_GOTO(id_vec_push(&out, tok->bos_id), rc, done);
    CHECK_GOTO(id_vec_push(&out, tok->chat_ids[CHAT_BEGIN]), rc, done);
    for (size_t i = 0; i <= n_msgs; i++) {
        int last = i == n_msgs;
        if (last && !add_generation_prompt) break;
        const char *role = last ? "assistant" : msgs[i].role;
        const char *content = last ? "" : msgs[i].content;
        if (!role || !content) {
            rc = MM_ERROR(MM_ERR_INVALID, "chat message %zu has no role or content", i);
            goto done;
        }
        if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0 && strcmp(role, "system") != 0) {
            rc = MM_ERROR(MM_ERR_INVALID, "chat message %zu: role must be user, assistant or system", i);
            goto done;
        }
        size_t clen = strlen(content);
        char *grown = realloc(span, clen + 2);
        CHECK_GOTO(CHECK_ALLOC(grown), rc, done);
        span = grown;
        span[0] = '\n';
        memcpy(span + 1, content, clen + 1);
        CHECK_GOTO(id_vec_push(&out, tok->chat_ids[CHAT_HEADER_START]), rc, done);
        CHECK_GOTO(encode_append(tok, role, strlen(role), 0, &w, &out), rc, done);
        CHECK_GOTO(id_vec_push(&out, tok->chat_ids[CHAT_HEADER_END]), rc, done);
        CHECK_GOTO(encode_marked(tok, span, clen + 1, marker, marker_id, &w, &out, n_marked), rc, done);
        if (clen > 0) CHECK_GOTO(id_vec_push(&out, tok->chat_ids[CHAT_EOT]), rc, done);
    }
done:
    free(span);
    enc_work_free(&w);
    if (rc != MM_OK) {
        free(out.ids);
        return rc;
    }
    *ids = out.ids;
    *n_ids = out.n;
    return MM_OK;
}
