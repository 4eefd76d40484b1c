/* See tcp_listen.h. */
#include "tcp_listen.h"

#include "log.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Splits "host:port" / "[v6]:port" / ":port" into host ("" = every interface) and port. */
static mm_status split_address(const char *key, const char *address, char *host, size_t host_cap, char *port,
                               size_t port_cap) {
    const char *colon = strrchr(address, ':');
    if (!colon || !colon[1]) return MM_ERROR(MM_ERR_INVALID, "%s \"%s\": want \"host:port\"", key, address);
    size_t n = (size_t)(colon - address);
    const char *h = address;
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') h++, n -= 2;
    if (n >= host_cap || strlen(colon + 1) >= port_cap)
        return MM_ERROR(MM_ERR_INVALID, "%s \"%s\" is too long", key, address);
    memcpy(host, h, n);
    host[n] = '\0';
    snprintf(port, port_cap, "%s", colon + 1);
    return MM_OK;
}

mm_status mm_tcp_listen(const char *key, const char *address, int *fd_out) {
    char host[256], port[16];
    CHECK(split_address(key, address, host, sizeof host, port, sizeof port));
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai != 0) return MM_ERROR(MM_ERR_INVALID, "%s \"%s\": %s", key, address, gai_strerror(gai));
    int fd = -1, err = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1; /* SO_REUSEADDR only: a port another live process listens on stays an error */
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return MM_ERROR(MM_ERR_IO, "%s \"%s\": %s%s%s%s", key, address, strerror(err),
                        err == EADDRINUSE ? " (another process serves this port; change " : "",
                        err == EADDRINUSE ? key : "", err == EADDRINUSE ? ")" : "");
    *fd_out = fd;
    return MM_OK;
}

void mm_mhd_log(void *prefix, const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    if (n && msg[n - 1] == '\n') msg[n - 1] = '\0';
    LOG_WARN("%s: %s", (const char *)prefix, msg);
}

int mm_tcp_bound_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}
