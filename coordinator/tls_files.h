/* The PEM texts of the coordinator's TLS settings (tls_cert, tls_key, tls_client_ca),
 * read once at start for both API doors: gRPC's SSL credentials and libmicrohttpd's
 * GnuTLS take the certificate and key as text, not as paths. */
#ifndef MM_COORD_TLS_FILES_H
#define MM_COORD_TLS_FILES_H

#include "common/status.h"

typedef struct {
    char *cert_pem;      /* NULL: TLS off */
    char *key_pem;       /* wiped before it is freed */
    char *client_ca_pem; /* NULL: clients are not asked for a certificate */
} mm_tls_files;

/* cert and key both set (TLS on) or both "" (off; client_ca must then be "" too). */
mm_status mm_tls_files_load(const char *cert, const char *key, const char *client_ca, mm_tls_files *out);
void mm_tls_files_free(mm_tls_files *t);

#endif
