/* See metrics_http.h. We bind the listening socket ourselves (so a taken port is a
 * clear error naming the address) and hand it to libmicrohttpd, which accepts and
 * answers on its internal polling thread and closes it on stop. */
#include "metrics_http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"

struct mm_metrics_http {
    struct MHD_Daemon *daemon;
    const mm_metrics *registry;
    const atomic_int *serving;
    int port;
};

/* Splits "host:port" / "[v6]:port" / ":port" into host (NULL: every interface) and port. */
static mm_status split_address(const char *address, char *host, size_t host_cap, char *port, size_t port_cap) {
    const char *colon = strrchr(address, ':');
    if (!colon || !colon[1])
        return MM_ERROR(MM_ERR_INVALID, "metrics_listen \"%s\": want \"host:port\"", address);
    size_t n = (size_t)(colon - address);
    const char *h = address;
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') h++, n -= 2;
    if (n >= host_cap || strlen(colon + 1) >= port_cap)
        return MM_ERROR(MM_ERR_INVALID, "metrics_listen \"%s\" is too long", address);
    memcpy(host, h, n);
    host[n] = '\0';
    snprintf(port, port_cap, "%s", colon + 1);
    return MM_OK;
}

/* A listening TCP socket on the first resolution of address that binds. */
static mm_status open_listener(const char *address, int *fd_out) {
    char host[256], port[16];
    CHECK(split_address(address, host, sizeof host, port, sizeof port));
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai != 0) return MM_ERROR(MM_ERR_INVALID, "metrics_listen \"%s\": %s", address, gai_strerror(gai));
    int fd = -1, err = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return MM_ERROR(MM_ERR_IO, "metrics_listen \"%s\": %s%s", address, strerror(err),
                        err == EADDRINUSE ? " (another process serves this port; change metrics_listen)" : "");
    *fd_out = fd;
    return MM_OK;
}

/* The port the kernel gave the socket (differs from the asked one only for port 0). */
static int bound_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

/* libmicrohttpd's own diagnostics go to our log (its messages end with a newline). */
static void log_mhd(void *cls, const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    if (n && msg[n - 1] == '\n') msg[n - 1] = '\0';
    LOG_WARN("metrics http: %s", msg);
}

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
    return respond(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len, MHD_RESPMEM_MUST_FREE);
}

mm_status mm_metrics_http_start(const char *address, const mm_metrics *registry, const atomic_int *serving,
                                mm_metrics_http **out) {
    *out = NULL;
    if (!address[0]) return MM_OK;
    if (!registry || !serving) return MM_ERROR(MM_ERR_INVALID, "metrics http: no registry or serving flag");
    mm_metrics_http *s = calloc(1, sizeof *s);
    CHECK(CHECK_ALLOC(s));
    s->registry = registry, s->serving = serving;
    int fd = -1;
    mm_status rc = open_listener(address, &fd);
    if (rc != MM_OK) {
        free(s);
        return rc;
    }
    s->port = bound_port(fd);
    s->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                                 answer, s, MHD_OPTION_EXTERNAL_LOGGER, log_mhd, NULL, MHD_OPTION_LISTEN_SOCKET,
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
