/* See tls_files.h. */
#include "tls_files.h"

#include "common/pem_file.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mm_status mm_tls_files_load(const char *cert, const char *key, const char *client_ca, mm_tls_files *out) {
    memset(out, 0, sizeof *out);
    if (!cert[0] != !key[0]) return MM_ERROR(MM_ERR_INVALID, "tls_cert and tls_key go together: set both or neither");
    if (!cert[0] && client_ca[0]) return MM_ERROR(MM_ERR_INVALID, "tls_client_ca needs tls_cert and tls_key");
    if (!cert[0]) return MM_OK;
    mm_status s = mm_pem_file_read("tls_cert", cert, &out->cert_pem);
    if (s == MM_OK) s = mm_pem_file_read("tls_key", key, &out->key_pem);
    if (s == MM_OK && client_ca[0]) s = mm_pem_file_read("tls_client_ca", client_ca, &out->client_ca_pem);
    if (s != MM_OK) mm_tls_files_free(out);
    return s;
}

void mm_tls_files_free(mm_tls_files *t) {
    if (t->key_pem) sodium_memzero(t->key_pem, strlen(t->key_pem));
    free(t->cert_pem), free(t->key_pem), free(t->client_ca_pem);
    memset(t, 0, sizeof *t);
}
