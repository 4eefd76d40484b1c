/* See metrics_scrape.h. */
#include "metrics_scrape.h"

#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int connect_to(const char *hostport) {
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host) {
        fprintf(stderr, "metrics: \"%s\": want host:port\n", hostport);
        return -1;
    }
    snprintf(host, sizeof host, "%.*s", (int)(colon - hostport), hostport);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gai = getaddrinfo(host, colon + 1, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "metrics: %s: %s\n", hostport, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) close(fd), fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) perror("metrics: connect");
    return fd;
}

int metrics_scrape(const char *hostport, char **text) {
    *text = NULL;
    int fd = connect_to(hostport);
    if (fd < 0) return -1;
    char req[320];
    int n = snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", hostport);
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
    int status = 0;
    char *body = ok ? (buf[len] = '\0', strstr(buf, "\r\n\r\n")) : NULL;
    if (!body || sscanf(buf, "HTTP/1.%*d %d", &status) != 1 || status != 200) {
        fprintf(stderr, "metrics: GET http://%s/metrics: %s\n", hostport, body ? "not 200" : "no complete reply");
        free(buf);
        return -1;
    }
    memmove(buf, body + 4, strlen(body + 4) + 1);
    *text = buf;
    return 0;
}

double metrics_sample(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, series, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

double metrics_get(const char *hostport, const char *series) {
    char *text = NULL;
    if (metrics_scrape(hostport, &text) != 0) return NAN;
    double v = metrics_sample(text, series);
    free(text);
    return v;
}
