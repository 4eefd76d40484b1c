/* See curve_keys.h. */
#include "curve_keys.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static int valid_z85_key(const char *s) {
    uint8_t bin[32];
    return strlen(s) == MM_Z85_KEY_LEN && zmq_z85_decode(bin, s) != NULL;
}

static mm_status write_text(const char *path, const char *text, mode_t mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) return MM_ERROR(MM_ERR_IO, "%s: cannot create", path);
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n;
    ok = close(fd) == 0 && ok;
    return ok ? MM_OK : MM_ERROR(MM_ERR_IO, "%s: write failed", path);
}

mm_status mm_curve_keygen(const char *path) {
    char pub[MM_Z85_KEY_LEN + 1], sec[MM_Z85_KEY_LEN + 1], text[128], pub_path[4200];
    if (zmq_curve_keypair(pub, sec) != 0) return MM_ERROR(MM_ERR_INTERNAL, "zmq_curve_keypair: %s", zmq_strerror(errno));
    snprintf(text, sizeof text, "public %s\nsecret %s\n", pub, sec);
    mm_status s = write_text(path, text, 0600);
    memset(text, 0, sizeof text), memset(sec, 0, sizeof sec);
    CHECK(s);
    snprintf(text, sizeof text, "public %s\n", pub);
    snprintf(pub_path, sizeof pub_path, "%s.pub", path);
    return write_text(pub_path, text, 0644);
}

mm_status mm_curve_key_read(const char *path, char *public_z85, char *secret_z85) {
    FILE *f = fopen(path, "r");
    if (!f) return MM_ERROR(MM_ERR_IO, "CURVE key file %s: cannot open", path);
    char line[256], word[16], key[128];
    public_z85[0] = 0;
    if (secret_z85) secret_z85[0] = 0;
    mm_status s = MM_OK;
    while (s == MM_OK && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%15s %127s", word, key) != 2) continue;
        char *dst = !strcmp(word, "public") ? public_z85 : !strcmp(word, "secret") ? secret_z85 : NULL;
        if (!dst) continue;
        if (!valid_z85_key(key)) s = MM_ERROR(MM_ERR_FORMAT, "CURVE key file %s: bad %s key", path, word);
        else snprintf(dst, MM_Z85_KEY_LEN + 1, "%s", key);
    }
    fclose(f);
    memset(line, 0, sizeof line), memset(key, 0, sizeof key);
    if (s == MM_OK && (!public_z85[0] || (secret_z85 && !secret_z85[0])))
        s = MM_ERROR(MM_ERR_FORMAT, "CURVE key file %s: no %s key (make one with mmctl keygen FILE)", path,
                     !public_z85[0] ? "public" : "secret");
    return s;
}

mm_status mm_curve_authorized_read(const char *path, unsigned char **keys, size_t *n_out) {
    FILE *f = fopen(path, "r");
    if (!f) return MM_ERROR(MM_ERR_IO, "pool_authorized_keys %s: cannot open", path);
    unsigned char *k = NULL;
    size_t n = 0;
    char line[512];
    mm_status s = MM_OK;
    for (int no = 1; s == MM_OK && fgets(line, sizeof line, f); no++) {
        char a[256] = "", b[256] = "";
        int got = sscanf(line, "%255s %255s", a, b);
        if (got < 1 || a[0] == '#') continue;
        const char *z = got == 2 ? b : a;
        if (!valid_z85_key(z)) {
            s = MM_ERROR(MM_ERR_FORMAT, "%s:%d: not a Z85 public key", path, no);
            break;
        }
        unsigned char *grown = realloc(k, (n + 1) * 32);
        if (!grown) {
            s = MM_ERROR(MM_ERR_NOMEM, "authorized keys");
            break;
        }
        k = grown;
        zmq_z85_decode(k + 32 * n++, z);
    }
    fclose(f);
    if (s == MM_OK && n == 0) s = MM_ERROR(MM_ERR_FORMAT, "%s: no keys (no worker could join)", path);
    if (s != MM_OK) {
        free(k);
        return s;
    }
    *keys = k, *n_out = n;
    return MM_OK;
}
