/* See http_client.h. */
#include "http_client.h"

#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* *fd: a socket connected to hostport with send/receive timeouts. */
static mm_status connect_to(const char *hostport, double timeout_s, int *out) {
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || (size_t)(colon - hostport) >= sizeof host)
        return MM_ERROR(MM_ERR_INVALID, "\"%s\": want host:port", hostport);
    snprintf(host, sizeof host, "%.*s", (int)(colon - hostport), hostport);
    if (host[0] == '[' && host[strlen(host) - 1] == ']') { /* [::1]:9464 */
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gai = getaddrinfo(host, colon + 1, &hints, &ai);
    if (gai != 0) return MM_ERROR(MM_ERR_IO, "%s: %s", hostport, gai_strerror(gai));
    struct timeval tv = {(time_t)timeout_s, (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
    int fd = -1;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        if (timeout_s > 0 && (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
                              setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv))) {
            close(fd), fd = -1;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) close(fd), fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) return MM_ERROR(MM_ERR_IO, "cannot connect to %s", hostport);
    *out = fd;
    return MM_OK;
}

mm_status mm_http_request(const char *hostport, const char *method, const char *path, double timeout_s,
                          mm_http_reply *out) {
    memset(out, 0, sizeof *out);
    int fd = -1;
    CHECK(connect_to(hostport, timeout_s, &fd));
    char req[1024];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                     method, path, hostport);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    int ok = buf && n > 0 && (size_t)n < sizeof req && write(fd, req, (size_t)n) == n;
    while (ok) {
        if (len + 1 == cap) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger) {
                ok = 0;
                break;
            }
            buf = bigger;
        }
        ssize_t got = read(fd, buf + len, cap - 1 - len);
        if (got < 0) ok = 0;
        if (got <= 0) break;
        len += (size_t)got;
    }
    close(fd);
    char *head_end = ok ? (buf[len] = '\0', strstr(buf, "\r\n\r\n")) : NULL;
    if (!head_end || sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1) {
        free(buf);
        return MM_ERROR(MM_ERR_IO, "%s %s from %s: no complete HTTP reply", method, path, hostport);
    }
    out->raw = buf, out->raw_len = len, out->head_end = head_end;
    out->body = head_end + 4, out->body_len = len - (size_t)(out->body - buf);
    return MM_OK;
}

void mm_http_reply_free(mm_http_reply *r) {
    free(r->raw);
    memset(r, 0, sizeof *r);
}

double mm_prometheus_sample(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, series, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}
