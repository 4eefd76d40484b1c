/* See metrics_http.h. We bind the listening socket ourselves (common/tcp_listen.c: a
 * taken port is a clear error naming the address) and hand it to libmicrohttpd, which accepts and
 * answers on its internal polling thread and closes it on stop. */
#include "metrics_http.h"

#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/tcp_listen.h"
#include "http_auth.h"

struct mm_metrics_http {
    struct MHD_Daemon *daemon;
    const mm_metrics *registry;
    const atomic_int *serving;
    mm_metrics_http_auth auth;
    int port;
};

/* Queues one complete response; body is freed by libmicrohttpd when mode says so. */
static enum MHD_Result respond(struct MHD_Connection *conn, unsigned int code, const char *content_type, char *body,
                               size_t len, enum MHD_ResponseMemoryMode mode) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        return MHD_NO; /* closes the connection */
    }
    enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (ok == MHD_YES && code == MHD_HTTP_METHOD_NOT_ALLOWED)
        ok = MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, MHD_HTTP_METHOD_GET);
    if (ok == MHD_YES) ok = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned int code, const char *text) {
    return respond(conn, code, "text/plain; charset=utf-8", (char *)text, strlen(text), MHD_RESPMEM_PERSISTENT);
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size,
                              void **request_state) {
    const mm_metrics_http *s = cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0)
        return respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    int health = !strcmp(url, "/healthz") || !strcmp(url, "/readyz");
    int open = (health && s->auth.health_open) || (!strcmp(url, "/metrics") && s->auth.metrics_open);
    char key_name[MM_API_KEY_NAME_MAX + 1];
    if (!open && !mm_http_key_ok(conn, s->auth.keys, key_name))
        return respond_text(conn, MHD_HTTP_UNAUTHORIZED, "missing or invalid API key (Authorization: Bearer KEY)\n");
    if (!strcmp(url, "/healthz")) return respond_text(conn, MHD_HTTP_OK, "ok\n");
    if (!strcmp(url, "/readyz"))
        return atomic_load(s->serving) == 1 ? respond_text(conn, MHD_HTTP_OK, "SERVING\n")
                                            : respond_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "NOT_SERVING\n");
    if (strcmp(url, "/metrics") != 0) return respond_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
    char *text;
    size_t len;
    if (mm_metrics_render(s->registry, &text, &len) != MM_OK) {
        LOG_ERROR("metrics http: %s", mm_error_last());
        return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render the metrics\n");
    }
    char *more = NULL;
    size_t more_len = 0;
    if (s->auth.keys && mm_api_keys_render_metrics(s->auth.keys, &more, &more_len) == MM_OK) { /* by key name */
        char *all = realloc(text, len + more_len + 1);
        if (all) memcpy(all + len, more, more_len + 1), text = all, len += more_len;
        free(more);
    }
    return respond(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len, MHD_RESPMEM_MUST_FREE);
}

mm_status mm_metrics_http_start(const char *address, const mm_metrics *registry, const atomic_int *serving,
                                const mm_metrics_http_auth *auth, mm_metrics_http **out) {
    *out = NULL;
    if (!address[0]) return MM_OK;
    if (!registry || !serving) return MM_ERROR(MM_ERR_INVALID, "metrics http: no registry or serving flag");
    mm_metrics_http *s = calloc(1, sizeof *s);
    CHECK(CHECK_ALLOC(s));
    s->registry = registry, s->serving = serving;
    if (auth) s->auth = *auth;
    int fd = -1;
    mm_status rc = mm_tcp_listen("metrics_listen", address, &fd);
    if (rc != MM_OK) {
        free(s);
        return rc;
    }
    s->port = mm_tcp_bound_port(fd);
    s->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                                 answer, s, MHD_OPTION_EXTERNAL_LOGGER, mm_mhd_log, (void *)"metrics http", MHD_OPTION_LISTEN_SOCKET,
                                 (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned int)64,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)10, MHD_OPTION_END);
    if (!s->daemon) {
        close(fd);
        free(s);
        return MM_ERROR(MM_ERR_IO, "metrics http on %s: libmicrohttpd did not start (see the log)", address);
    }
    LOG_INFO("metrics on http://%s/metrics (port %d)", address, s->port);
    *out = s;
    return MM_OK;
}

int mm_metrics_http_port(const mm_metrics_http *s) { return s->port; }

void mm_metrics_http_stop(mm_metrics_http *s) {
    if (!s) return;
    MHD_stop_daemon(s->daemon);
    free(s);
}
