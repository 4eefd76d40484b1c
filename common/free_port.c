/* See free_port.h. */
#include "free_port.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define PORT_LOWEST 10000 /* above the well-known and most registered service ports */
#define PORTS_REMEMBERED 256

/* The first port of the kernel's ephemeral range (Linux default 32768). */
static int ephemeral_low(void) {
    int low = 32768, high = 0;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d %d", &low, &high) != 2) low = 32768;
        fclose(f);
    }
    return low;
}

/* 1 when a socket without SO_REUSEADDR can bind 127.0.0.1:port (so no listener and no
 * TIME_WAIT connection holds it). */
static int port_bindable(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

int mm_free_port(void) {
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static int given[PORTS_REMEMBERED]; /* ring of ports already returned */
    static int n_given;
    int low = PORT_LOWEST, high = ephemeral_low(); /* draw from [low, high) */
    if (high - low < 1000) low = 1024;             /* an unusually wide ephemeral range */
    if (high - low < 1000) return -1;
    pthread_mutex_lock(&lock);
    int port = -1;
    for (int attempt = 0; attempt < 500 && port < 0; attempt++) {
        uint32_t r;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) break;
        int candidate = low + (int)(r % (uint32_t)(high - low));
        int seen = 0;
        for (int i = 0; i < n_given && i < PORTS_REMEMBERED; i++) seen |= given[i] == candidate;
        if (!seen && port_bindable(candidate)) port = candidate;
    }
    if (port > 0) given[n_given++ % PORTS_REMEMBERED] = port;
    pthread_mutex_unlock(&lock);
    return port;
}
