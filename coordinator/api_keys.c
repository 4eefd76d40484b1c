/* See api_keys.h. */
#include "api_keys.h"

#include <ctype.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HASH_BYTES 32
#define HASH_PREFIX "blake2b:"

typedef struct {
    char name[MM_API_KEY_NAME_MAX + 1];
    unsigned char hash[HASH_BYTES]; /* BLAKE2b-256 of the key */
} key_entry;

/* What one key name uses and was refused, kept across reloads (by name). */
typedef struct usage {
    struct usage *next;
    char name[MM_API_KEY_NAME_MAX + 1];
    int32_t requests;        /* in flight */
    int64_t tokens;          /* in flight */
    uint64_t total, refused; /* requests taken, refused by a limit */
} usage;

struct mm_api_keys {
    char path[4096];
    pthread_rwlock_t lock;
    key_entry *keys; /* [n] */
    size_t n;
    pthread_mutex_t usage_mu; /* the list and the limits */
    usage *usage;
    int32_t max_requests;
    int64_t max_tokens;
};

static void hash_key(const char *key, size_t len, unsigned char *out) {
    crypto_generichash(out, HASH_BYTES, (const unsigned char *)key, len, NULL, 0);
}

void mm_api_key_hash_text(const char *key, char *out) {
    unsigned char h[HASH_BYTES];
    hash_key(key, strlen(key), h);
    memcpy(out, HASH_PREFIX, sizeof HASH_PREFIX - 1);
    sodium_bin2hex(out + sizeof HASH_PREFIX - 1, 2 * HASH_BYTES + 1, h, HASH_BYTES);
}

static int valid_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > MM_API_KEY_NAME_MAX) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("_.-", *s)) return 0;
    return 1;
}

/* One "NAME KEY" line into e; a message for the operator otherwise. */
static mm_status parse_line(const char *path, int line_no, char *line, key_entry *e) {
    char *save = NULL, *name = strtok_r(line, " \t", &save), *key = strtok_r(NULL, " \t", &save);
    if (!name || !key || strtok_r(NULL, " \t", &save))
        return MM_ERROR(MM_ERR_FORMAT, "%s:%d: expected \"NAME KEY\" (two fields)", path, line_no);
    if (!valid_name(name))
        return MM_ERROR(MM_ERR_FORMAT, "%s:%d: key name must be 1-%d of [A-Za-z0-9_.-]", path, line_no,
                        MM_API_KEY_NAME_MAX);
    snprintf(e->name, sizeof e->name, "%s", name);
    if (!strncmp(key, HASH_PREFIX, sizeof HASH_PREFIX - 1)) {
        const char *hex = key + sizeof HASH_PREFIX - 1;
        size_t got = 0;
        if (strlen(hex) != 2 * HASH_BYTES ||
            sodium_hex2bin(e->hash, HASH_BYTES, hex, strlen(hex), NULL, &got, NULL) != 0 || got != HASH_BYTES)
            return MM_ERROR(MM_ERR_FORMAT, "%s:%d: %s needs %d hex digits", path, line_no, HASH_PREFIX, 2 * HASH_BYTES);
        return MM_OK;
    }
    size_t len = strlen(key);
    if (len < MM_API_KEY_MIN_LEN)
        return MM_ERROR(MM_ERR_FORMAT, "%s:%d: key \"%s\" is shorter than %d characters", path, line_no, name,
                        MM_API_KEY_MIN_LEN);
    hash_key(key, len, e->hash);
    sodium_memzero(key, len);
    return MM_OK;
}

static mm_status read_keys(const char *path, key_entry **out, size_t *n_out) {
    FILE *f = fopen(path, "r");
    if (!f) return MM_ERROR(MM_ERR_IO, "api_keys_file %s: cannot open", path);
    key_entry *keys = NULL;
    size_t n = 0, cap = 0;
    char line[1024];
    mm_status s = MM_OK;
    for (int line_no = 1; s == MM_OK && fgets(line, sizeof line, f); line_no++) {
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            s = MM_ERROR(MM_ERR_FORMAT, "%s:%d: line longer than %zu bytes", path, line_no, sizeof line - 2);
            break;
        }
        while (len && isspace((unsigned char)line[len - 1])) line[--len] = 0;
        char *p = line;
        while (isspace((unsigned char)*p)) p++;
        if (!*p || *p == '#') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            key_entry *grown = realloc(keys, cap * sizeof *keys);
            if (!grown) {
                s = MM_ERROR(MM_ERR_NOMEM, "api keys");
                break;
            }
            keys = grown;
        }
        s = parse_line(path, line_no, p, &keys[n]);
        for (size_t i = 0; s == MM_OK && i < n; i++)
            if (!strcmp(keys[i].name, keys[n].name))
                s = MM_ERROR(MM_ERR_FORMAT, "%s:%d: key name \"%s\" used twice", path, line_no, keys[n].name);
        if (s == MM_OK) n++;
        sodium_memzero(line, sizeof line);
    }
    fclose(f);
    if (s == MM_OK && n == 0) s = MM_ERROR(MM_ERR_FORMAT, "%s: no keys (every call would be refused)", path);
    if (s != MM_OK) {
        free(keys);
        return s;
    }
    *out = keys, *n_out = n;
    return MM_OK;
}

mm_status mm_api_keys_load(const char *path, mm_api_keys **out) {
    if (sodium_init() < 0) return MM_ERROR(MM_ERR_INTERNAL, "libsodium init");
    mm_api_keys *k = calloc(1, sizeof *k);
    CHECK(CHECK_ALLOC(k));
    snprintf(k->path, sizeof k->path, "%s", path);
    mm_status s = read_keys(path, &k->keys, &k->n);
    if (s != MM_OK) {
        free(k);
        return s;
    }
    pthread_rwlock_init(&k->lock, NULL);
    pthread_mutex_init(&k->usage_mu, NULL);
    *out = k;
    return MM_OK;
}

mm_status mm_api_keys_reload(mm_api_keys *k) {
    key_entry *keys;
    size_t n;
    CHECK(read_keys(k->path, &keys, &n));
    pthread_rwlock_wrlock(&k->lock);
    key_entry *old = k->keys;
    k->keys = keys, k->n = n;
    pthread_rwlock_unlock(&k->lock);
    free(old);
    return MM_OK;
}

void mm_api_keys_free(mm_api_keys *k) {
    if (!k) return;
    pthread_rwlock_destroy(&k->lock);
    pthread_mutex_destroy(&k->usage_mu);
    for (usage *u = k->usage, *next; u; u = next) next = u->next, free(u);
    free(k->keys);
    free(k);
}

size_t mm_api_keys_count(mm_api_keys *k) {
    pthread_rwlock_rdlock(&k->lock);
    size_t n = k->n;
    pthread_rwlock_unlock(&k->lock);
    return n;
}

int mm_api_keys_check(mm_api_keys *k, const char *auth, size_t len, char *name) {
    static const char scheme[] = "Bearer ";
    if (!auth || len <= sizeof scheme - 1 || strncasecmp(auth, scheme, sizeof scheme - 1)) return 0;
    const char *key = auth + sizeof scheme - 1;
    size_t n = len - (sizeof scheme - 1);
    while (n && isspace((unsigned char)key[n - 1])) n--;
    unsigned char h[HASH_BYTES];
    hash_key(key, n, h);
    int found = -1;
    pthread_rwlock_rdlock(&k->lock);
    for (size_t i = 0; i < k->n; i++) { /* every entry compared: the time does not tell which matched */
        int same = sodium_memcmp(h, k->keys[i].hash, HASH_BYTES) == 0;
        found = same && found < 0 ? (int)i : found;
    }
    if (found >= 0) snprintf(name, MM_API_KEY_NAME_MAX + 1, "%s", k->keys[found].name);
    pthread_rwlock_unlock(&k->lock);
    return found >= 0;
}

void mm_api_keys_set_limits(mm_api_keys *k, int32_t max_requests, int64_t max_tokens) {
    pthread_mutex_lock(&k->usage_mu);
    k->max_requests = max_requests, k->max_tokens = max_tokens;
    pthread_mutex_unlock(&k->usage_mu);
}

/* Under usage_mu: name's record, made when create and missing (NULL: no memory). */
static usage *usage_of(mm_api_keys *k, const char *name, int create) {
    for (usage *u = k->usage; u; u = u->next)
        if (!strcmp(u->name, name)) return u;
    usage *u = create ? calloc(1, sizeof *u) : NULL;
    if (u) {
        snprintf(u->name, sizeof u->name, "%s", name);
        u->next = k->usage, k->usage = u;
    }
    return u;
}

int mm_api_keys_acquire(mm_api_keys *k, const char *name, int64_t tokens, char *msg, size_t cap) {
    pthread_mutex_lock(&k->usage_mu);
    usage *u = usage_of(k, name, 1);
    int ok = u != NULL;
    if (!u) snprintf(msg, cap, "out of memory");
    else if (k->max_requests && u->requests >= k->max_requests) {
        ok = 0;
        snprintf(msg, cap, "API key \"%s\": %d requests in flight, its limit (key_max_requests)", name, u->requests);
    } else if (k->max_tokens && u->tokens + tokens > k->max_tokens) {
        ok = 0;
        snprintf(msg, cap, "API key \"%s\": %lld tokens in flight + %lld asked for is over its limit of %lld "
                 "(key_max_tokens)", name, (long long)u->tokens, (long long)tokens, (long long)k->max_tokens);
    }
    if (u && ok) u->requests++, u->tokens += tokens, u->total++;
    else if (u) u->refused++;
    pthread_mutex_unlock(&k->usage_mu);
    return ok;
}

void mm_api_keys_release(mm_api_keys *k, const char *name, int32_t requests, int64_t tokens) {
    pthread_mutex_lock(&k->usage_mu);
    usage *u = usage_of(k, name, 0);
    if (u) u->requests -= requests, u->tokens -= tokens;
    pthread_mutex_unlock(&k->usage_mu);
}

mm_status mm_api_keys_render_metrics(mm_api_keys *k, char **text, size_t *len) {
    static const struct {
        const char *name, *type, *help;
    } SERIES[] = {
        {"api_key_requests_total", "counter", "Requests admitted, by API key name."},
        {"api_key_refused_total", "counter", "Requests refused by a per-key limit (RESOURCE_EXHAUSTED / 429)."},
        {"api_key_requests_in_flight", "gauge", "Requests of the key not yet ended."},
        {"api_key_tokens_in_flight", "gauge", "Prompt + max_new_tokens of the key's requests not yet ended."},
    };
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return MM_ERROR(MM_ERR_NOMEM, "api key metrics");
    pthread_mutex_lock(&k->usage_mu);
    for (size_t i = 0; i < sizeof SERIES / sizeof *SERIES; i++) {
        fprintf(f, "# HELP metamorph_%s %s\n# TYPE metamorph_%s %s\n", SERIES[i].name, SERIES[i].help, SERIES[i].name,
                SERIES[i].type);
        for (usage *u = k->usage; u; u = u->next) {
            double v = i == 0 ? (double)u->total : i == 1 ? (double)u->refused : i == 2 ? u->requests : (double)u->tokens;
            fprintf(f, "metamorph_%s{key=\"%s\"} %.17g\n", SERIES[i].name, u->name, v); /* names: [A-Za-z0-9_.-] */
        }
    }
    pthread_mutex_unlock(&k->usage_mu);
    if (fclose(f) != 0) {
        free(buf);
        return MM_ERROR(MM_ERR_NOMEM, "api key metrics");
    }
    *text = buf, *len = n;
    return MM_OK;
}
