/* What the coordinator's libmicrohttpd servers share to keep strangers out: TLS options
 * from the PEM texts (GnuTLS inside libmicrohttpd), the client-certificate check that
 * libmicrohttpd leaves to the application, and the Bearer API-key check. */
#ifndef MM_COORD_HTTP_AUTH_H
#define MM_COORD_HTTP_AUTH_H

#include <microhttpd.h>

#include "api_keys.h"
#include "tls_files.h"

/* Fills items (at least 4) with the TLS options for t, MHD_OPTION_END last; returns the
 * MHD_USE_TLS flag to add to the daemon's flags, or 0 when TLS is off. */
unsigned mm_http_tls_options(const mm_tls_files *t, struct MHD_OptionItem *items);
/* With a client CA: did the client present a certificate that verifies against it?
 * Always 1 without one. */
int mm_http_client_cert_ok(struct MHD_Connection *conn, const mm_tls_files *t);
/* With keys: does "Authorization: Bearer KEY" name a key in force (its name into
 * name[MM_API_KEY_NAME_MAX + 1])? Always 1 without keys. */
int mm_http_key_ok(struct MHD_Connection *conn, mm_api_keys *keys, char *name);

#endif
