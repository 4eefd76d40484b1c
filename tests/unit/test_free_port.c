/* mm_free_port: distinct ports, all below the kernel's ephemeral range (where no
 * outgoing connection's source port can land) and bindable when returned; a port
 * someone is listening on is never returned. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/free_port.h"
#include "tests/testutil.h"

#define N_PORTS 200

/* A listening socket on 127.0.0.1:port, or -1. */
static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

int main(void) {
    int low = 32768, high = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        EXPECT(fscanf(f, "%d %d", &low, &high) == 2, "ip_local_port_range unreadable");
        fclose(f);
    }
    int ports[N_PORTS], fds[N_PORTS];
    for (int i = 0; i < N_PORTS; i++) {
        ports[i] = mm_free_port();
        EXPECT(ports[i] >= 1024 && ports[i] < low, "port %d: %d is not in [1024, %d)", i, ports[i], low);
        for (int j = 0; j < i; j++) EXPECT(ports[j] != ports[i], "port %d repeats port %d (%d)", i, j, ports[i]);
        /* held open, so a later draw of the same port must be refused as in use */
        fds[i] = listen_on(ports[i]);
        EXPECT(fds[i] >= 0, "port %d (%d) could not be bound", i, ports[i]);
    }
    for (int i = 0; i < N_PORTS; i++)
        if (fds[i] >= 0) close(fds[i]);
    return mm_test_finish("free_port");
}
