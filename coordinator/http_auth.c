/* See http_auth.h. */
#include "http_auth.h"

#include <gnutls/gnutls.h>
#include <string.h>

unsigned mm_http_tls_options(const mm_tls_files *t, struct MHD_OptionItem *items) {
    int n = 0;
    if (t && t->cert_pem) {
        items[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, t->cert_pem};
        items[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, t->key_pem};
        if (t->client_ca_pem) /* asks for a certificate; mm_http_client_cert_ok checks it */
            items[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, t->client_ca_pem};
    }
    items[n] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    return n ? MHD_USE_TLS : 0;
}

int mm_http_client_cert_ok(struct MHD_Connection *conn, const mm_tls_files *t) {
    if (!t || !t->client_ca_pem) return 1;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!ci || !ci->tls_session) return 0;
    gnutls_session_t session = (gnutls_session_t)ci->tls_session;
    unsigned n_certs = 0, status = 0;
    if (!gnutls_certificate_get_peers(session, &n_certs) || n_certs == 0) return 0;
    return gnutls_certificate_verify_peers2(session, &status) == GNUTLS_E_SUCCESS && status == 0;
}

int mm_http_key_ok(struct MHD_Connection *conn, mm_api_keys *keys, char *name) {
    if (!keys) return 1;
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    return auth && mm_api_keys_check(keys, auth, strlen(auth), name);
}
