/* See h2_guard.h. A connection moves through: accepted -> (TLS handshake) -> preface
 * read (bytes held, not forwarded) -> handed to gRPC (socketpair; bytes relayed both
 * ways, the client's checked by h2_filter as they arrive) -> closed. Either side's end
 * or any limit closes both ends; gRPC then sees its end close and drops the transport. */
#include "h2_guard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/tcp_listen.h"

#define RELAY_BYTES 16384 /* per direction per connection */

_Static_assert(MM_METRICS_H2_CONTROL_RATE - MM_METRICS_H2_BAD_PREFACE == MM_H2_CONTROL_RATE - MM_H2_BAD_PREFACE,
               "the metric's reasons follow the filter's verdicts");

typedef struct conn conn;
typedef struct {
    conn *c;
    int inner;      /* 0: the client's socket, 1: our end of the socketpair */
    uint32_t mask;  /* epoll events asked for now; 0: not registered */
} end_ref;

struct conn {
    conn *prev, *next;
    int client, inner;          /* sockets; inner -1 until handed to gRPC */
    int grpc_fd;                /* gRPC's end, its peer name "fd:N"; -1 before */
    gnutls_session_t tls;       /* NULL: plain text */
    int handshaking;            /* TLS handshake in progress */
    int client_eof;             /* the client ended its side */
    double t_open_ms;
    char peer[64];              /* "ip:port" */
    char host[48];              /* "ip": the per-peer count's key */
    end_ref e_client, e_inner;
    mm_h2_filter filter;
    uint8_t up[RELAY_BYTES];    /* client -> gRPC: [0, up_len) not yet written */
    size_t up_len;
    uint8_t down[RELAY_BYTES];  /* gRPC -> client: [down_off, down_len) not yet written */
    size_t down_off, down_len;
};

struct mm_h2_guard {
    mm_h2_guard_params p;
    grpc_server *server;
    int listen_fd, epoll_fd, wake_fd;
    pthread_t thread;
    int started;
    atomic_int stopping;
    end_ref e_listen, e_wake;
    gnutls_certificate_credentials_t cred; /* NULL: plain text */
    gnutls_priority_t prio;
    grpc_server_credentials *insecure;     /* for grpc_server_add_channel_from_fd */
    pthread_mutex_t mu;                    /* door_open, the list (peer lookups) */
    int door_open;
    conn *conns;
    int n_conns;
    double t_accept_resume_ms;             /* accepting paused (out of descriptors) until then; 0: not */
    double t_logged_accept_ms;
    double t_logged_ms[MM_METRICS_H2_REFUSAL_COUNT];
    long suppressed[MM_METRICS_H2_REFUSAL_COUNT];
};

/* ------------------------------------------------------------------ bookkeeping */

static const char *refusal_text(mm_metrics_h2_refusal r) {
    switch (r) {
    case MM_METRICS_H2_PEER_LIMIT: return "too many connections from this address (http2_max_connections_per_peer)";
    case MM_METRICS_H2_CONNECTION_LIMIT: return "too many connections (http2_max_connections)";
    case MM_METRICS_H2_HANDSHAKE_TIMEOUT: return "no TLS handshake / HTTP/2 preface in time (http2_handshake_timeout_ms)";
    case MM_METRICS_H2_TLS: return "TLS handshake failed";
    case MM_METRICS_H2_BAD_PREFACE: return "not HTTP/2";
    case MM_METRICS_H2_HEADER_BLOCK: return "header block too long (CONTINUATION flood?)";
    case MM_METRICS_H2_RESET_RATE: return "streams reset too fast (Rapid Reset?)";
    case MM_METRICS_H2_CONTROL_RATE: return "control frames too fast (PING/SETTINGS flood?)";
    default: return "?";
    }
}

/* Counted always; logged at most once a second per reason, with what was not logged. */
static void note_refusal(mm_h2_guard *g, mm_metrics_h2_refusal r, const char *peer, const char *detail) {
    mm_metrics_inc(g->p.metrics, MM_METRIC_HTTP2_REFUSED_TOTAL, (int)r);
    double now = mm_now_ms();
    if (now - g->t_logged_ms[r] < 1000) {
        g->suppressed[r]++;
        return;
    }
    LOG_WARN("gRPC door: closed %s: %s%s%s (%ld more like it not logged)", peer, refusal_text(r), detail ? ": " : "",
             detail ? detail : "", g->suppressed[r]);
    g->t_logged_ms[r] = now;
    g->suppressed[r] = 0;
}

static int per_peer(const mm_h2_guard *g, const char *host) {
    int n = 0;
    for (const conn *c = g->conns; c; c = c->next) n += !strcmp(c->host, host);
    return n;
}

static void set_mask(mm_h2_guard *g, int fd, end_ref *e, uint32_t mask) {
    if (fd < 0 || e->mask == mask) return;
    struct epoll_event ev = {.events = mask, .data.ptr = e};
    int op = !e->mask ? EPOLL_CTL_ADD : !mask ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(g->epoll_fd, op, fd, &ev) != 0 && op != EPOLL_CTL_DEL)
        LOG_WARN("gRPC door: epoll_ctl: %s", strerror(errno));
    e->mask = mask;
}

static void conn_close(mm_h2_guard *g, conn *c) {
    set_mask(g, c->client, &c->e_client, 0);
    set_mask(g, c->inner, &c->e_inner, 0);
    if (c->tls) {
        if (!c->handshaking) gnutls_bye(c->tls, GNUTLS_SHUT_WR); /* best effort, nonblocking */
        gnutls_deinit(c->tls);
    }
    close(c->client);
    pthread_mutex_lock(&g->mu);
    if (c->inner >= 0) close(c->inner); /* gRPC sees its end close and drops the transport */
    if (c->prev) c->prev->next = c->next;
    else g->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    g->n_conns--;
    pthread_mutex_unlock(&g->mu);
    mm_metrics_set(g->p.metrics, MM_METRIC_HTTP2_CONNECTIONS, 0, g->n_conns);
    free(c);
}

static void refuse(mm_h2_guard *g, conn *c, mm_metrics_h2_refusal r, const char *detail) {
    note_refusal(g, r, c->peer, detail);
    conn_close(g, c);
}

/* ------------------------------------------------------------------ I/O */

/* Reads what the client sent into up[]: > 0 bytes, 0 nothing now, -1 its end or an error. */
static ssize_t client_read(conn *c) {
    size_t room = sizeof c->up - c->up_len;
    if (!room) return 0;
    if (!c->tls) {
        ssize_t n = recv(c->client, c->up + c->up_len, room, 0);
        if (n > 0) return n;
        return n < 0 && (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    }
    ssize_t n = gnutls_record_recv(c->tls, c->up + c->up_len, room);
    if (n > 0) return n;
    return n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED ? 0 : -1;
}

/* Writes down[] to the client: 0 done or would block, -1 gone. */
static int client_write(conn *c) {
    while (c->down_off < c->down_len) {
        ssize_t n;
        if (c->tls) {
            /* On E_AGAIN GnuTLS wants the same buffer again: down[] does not move until sent. */
            n = gnutls_record_send(c->tls, c->down + c->down_off, c->down_len - c->down_off);
            if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) return 0;
        } else {
            n = send(c->client, c->down + c->down_off, c->down_len - c->down_off, MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
        }
        if (n <= 0) return -1;
        c->down_off += (size_t)n;
    }
    c->down_off = c->down_len = 0;
    return 0;
}

/* Writes up[] to gRPC: 0 done or would block, -1 gone. */
static int inner_write(conn *c) {
    size_t off = 0;
    while (off < c->up_len) {
        ssize_t n = send(c->inner, c->up + off, c->up_len - off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (n <= 0) return -1;
        off += (size_t)n;
    }
    memmove(c->up, c->up + off, c->up_len - off);
    c->up_len -= off;
    return 0;
}

/* The preface is in: a socketpair, gRPC takes one end. 0, or -1 (closing). */
static int hand_over(mm_h2_guard *g, conn *c) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        LOG_WARN("gRPC door: socketpair: %s", strerror(errno));
        return -1;
    }
    pthread_mutex_lock(&g->mu);
    if (!g->door_open) {
        pthread_mutex_unlock(&g->mu);
        close(sv[0]), close(sv[1]);
        return -1;
    }
    c->inner = sv[0];
    c->grpc_fd = sv[1];
    grpc_server_add_channel_from_fd(g->server, sv[1], g->insecure); /* gRPC owns sv[1] now */
    pthread_mutex_unlock(&g->mu);
    return 0;
}

/* Asks epoll for what each end can do next: read while there is room, write while there
 * is something to write (TLS handshakes ask for what GnuTLS waits on). */
static void update_masks(mm_h2_guard *g, conn *c) {
    uint32_t m = 0;
    if (c->handshaking) m = gnutls_record_get_direction(c->tls) ? EPOLLOUT : EPOLLIN;
    else {
        if (!c->client_eof && c->up_len < sizeof c->up) m |= EPOLLIN;
        if (c->down_off < c->down_len) m |= EPOLLOUT;
    }
    set_mask(g, c->client, &c->e_client, m);
    if (c->inner >= 0) {
        uint32_t mi = 0;
        if (c->down_len == 0) mi |= EPOLLIN;
        if (c->up_len) mi |= EPOLLOUT;
        set_mask(g, c->inner, &c->e_inner, mi);
    }
}

/* Everything that can move now moves; -1 when the connection must close (already counted
 * when a limit closed it). */
static int pump(mm_h2_guard *g, conn *c, mm_metrics_h2_refusal *why, const char **detail) {
    if (c->handshaking) {
        int rc = gnutls_handshake(c->tls);
        if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) return 0;
        if (rc < 0) {
            *why = MM_METRICS_H2_TLS, *detail = gnutls_strerror(rc);
            return -1;
        }
        c->handshaking = 0;
    }
    for (;;) { /* read while there is room (and, with TLS, decrypted bytes waiting) */
        ssize_t n = c->client_eof ? 0 : client_read(c);
        if (n < 0) {
            c->client_eof = 1;
            break;
        }
        if (n == 0) break;
        mm_h2_verdict v = mm_h2_filter_feed(&c->filter, c->up + c->up_len, (size_t)n, mm_now_ms());
        c->up_len += (size_t)n;
        if (v != MM_H2_OK) {
            *why = (mm_metrics_h2_refusal)(MM_METRICS_H2_BAD_PREFACE + (v - MM_H2_BAD_PREFACE));
            *detail = NULL;
            return -1;
        }
        if (c->inner < 0 && mm_h2_filter_preface_done(&c->filter) && hand_over(g, c) != 0) return -1;
        if (c->inner >= 0 && inner_write(c) != 0) return -1;
        if (!c->tls && c->up_len) break; /* gRPC is slow: wait for it (epoll) */
        if (c->tls && (c->up_len == sizeof c->up || !gnutls_record_check_pending(c->tls))) break;
    }
    if (c->inner >= 0) {
        if (c->up_len && inner_write(c) != 0) return -1;
        if (c->down_len == 0) {
            ssize_t n = recv(c->inner, c->down, sizeof c->down, 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return -1; /* gRPC closed it */
            if (n > 0) c->down_off = 0, c->down_len = (size_t)n;
        }
        if (client_write(c) != 0) return -1;
    }
    if (c->client_eof && !c->up_len) return -1; /* the client left and everything it sent went on */
    return 0;
}

static void on_accept(mm_h2_guard *g) {
    for (;;) {
        struct sockaddr_storage sa;
        socklen_t sl = sizeof sa;
        int fd = accept4(g->listen_fd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* the listen socket stays readable: stop asking for 100 ms rather than spin */
                if (mm_now_ms() - g->t_logged_accept_ms > 1000) {
                    LOG_WARN("gRPC door: accept: %s (%d connections open); pausing new connections", strerror(errno),
                             g->n_conns);
                    g->t_logged_accept_ms = mm_now_ms();
                }
                set_mask(g, g->listen_fd, &g->e_listen, 0);
                g->t_accept_resume_ms = mm_now_ms() + 100;
            } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                LOG_WARN("gRPC door: accept: %s", strerror(errno));
            }
            return;
        }
        char host[48] = "?", peer[64];
        int port = 0;
        if (sa.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&sa;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
            snprintf(peer, sizeof peer, "%s:%d", host, port);
        } else if (sa.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
            snprintf(peer, sizeof peer, "[%s]:%d", host, port);
        } else {
            snprintf(peer, sizeof peer, "?");
        }
        mm_metrics_h2_refusal r = MM_METRICS_H2_REFUSAL_COUNT;
        if (g->n_conns >= g->p.max_connections) r = MM_METRICS_H2_CONNECTION_LIMIT;
        else if (per_peer(g, host) >= g->p.max_per_peer) r = MM_METRICS_H2_PEER_LIMIT;
        conn *c = r == MM_METRICS_H2_REFUSAL_COUNT ? calloc(1, sizeof *c) : NULL;
        if (!c) {
            if (r != MM_METRICS_H2_REFUSAL_COUNT) note_refusal(g, r, peer, NULL);
            else LOG_WARN("gRPC door: out of memory for a connection from %s", peer);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->client = fd, c->inner = -1, c->grpc_fd = -1;
        c->t_open_ms = mm_now_ms();
        snprintf(c->host, sizeof c->host, "%s", host);
        snprintf(c->peer, sizeof c->peer, "%s", peer);
        c->e_client = (end_ref){c, 0, 0};
        c->e_inner = (end_ref){c, 1, 0};
        mm_h2_filter_init(&c->filter, &g->p.frames, c->t_open_ms);
        if (g->cred) {
            int rc = gnutls_init(&c->tls, GNUTLS_SERVER | GNUTLS_NONBLOCK);
            if (rc == 0) rc = gnutls_priority_set(c->tls, g->prio);
            if (rc == 0) rc = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, g->cred);
            gnutls_datum_t h2 = {(unsigned char *)"h2", 2};
            if (rc == 0) rc = gnutls_alpn_set_protocols(c->tls, &h2, 1, 0);
            if (rc == 0 && g->p.tls->client_ca_pem) {
                gnutls_certificate_server_set_request(c->tls, GNUTLS_CERT_REQUIRE);
                gnutls_session_set_verify_cert(c->tls, NULL, 0);
            }
            if (rc != 0) {
                LOG_WARN("gRPC door: TLS session for %s: %s", peer, gnutls_strerror(rc));
                if (c->tls) gnutls_deinit(c->tls);
                close(fd);
                free(c);
                continue;
            }
            gnutls_transport_set_int(c->tls, fd);
            gnutls_handshake_set_timeout(c->tls, 0); /* our own deadline covers it */
            c->handshaking = 1;
        }
        pthread_mutex_lock(&g->mu);
        c->next = g->conns;
        if (g->conns) g->conns->prev = c;
        g->conns = c;
        g->n_conns++;
        pthread_mutex_unlock(&g->mu);
        mm_metrics_set(g->p.metrics, MM_METRIC_HTTP2_CONNECTIONS, 0, g->n_conns);
        update_masks(g, c);
    }
}

/* Connections still without a handshake or preface past the deadline are closed. */
static void reap_slow(mm_h2_guard *g) {
    double now = mm_now_ms();
    for (conn *c = g->conns, *next; c; c = next) {
        next = c->next;
        if (c->inner < 0 && now - c->t_open_ms > g->p.handshake_ms) refuse(g, c, MM_METRICS_H2_HANDSHAKE_TIMEOUT, NULL);
    }
}

static void *guard_main(void *arg) {
    mm_h2_guard *g = arg;
    struct epoll_event ev[64];
    double t_reap = mm_now_ms();
    while (!g->stopping) {
        int n = epoll_wait(g->epoll_fd, ev, 64, g->t_accept_resume_ms ? 50 : 250);
        for (int i = 0; i < n; i++) {
            end_ref *e = ev[i].data.ptr;
            if (e == &g->e_wake) continue;
            if (e == &g->e_listen) {
                on_accept(g);
                continue;
            }
            conn *c = e->c;
            mm_metrics_h2_refusal why = MM_METRICS_H2_REFUSAL_COUNT;
            const char *detail = NULL;
            if (pump(g, c, &why, &detail) != 0) {
                if (why != MM_METRICS_H2_REFUSAL_COUNT) refuse(g, c, why, detail);
                else conn_close(g, c);
                /* a closed conn may appear again later in ev[]: mark those entries dead */
                for (int j = i + 1; j < n; j++) {
                    end_ref *o = ev[j].data.ptr;
                    if (o != &g->e_wake && o != &g->e_listen && o->c == c) ev[j].data.ptr = &g->e_wake;
                }
                continue;
            }
            update_masks(g, c);
        }
        if (g->t_accept_resume_ms && mm_now_ms() >= g->t_accept_resume_ms) {
            g->t_accept_resume_ms = 0;
            set_mask(g, g->listen_fd, &g->e_listen, EPOLLIN);
        }
        if (mm_now_ms() - t_reap > 250) {
            reap_slow(g);
            t_reap = mm_now_ms();
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ lifecycle */

static mm_status tls_setup(mm_h2_guard *g) {
    const mm_tls_files *t = g->p.tls;
    int rc = gnutls_certificate_allocate_credentials(&g->cred);
    if (rc == 0) {
        gnutls_datum_t cert = {(unsigned char *)t->cert_pem, (unsigned)strlen(t->cert_pem)};
        gnutls_datum_t key = {(unsigned char *)t->key_pem, (unsigned)strlen(t->key_pem)};
        rc = gnutls_certificate_set_x509_key_mem(g->cred, &cert, &key, GNUTLS_X509_FMT_PEM);
    }
    if (rc == 0 && t->client_ca_pem) {
        gnutls_datum_t ca = {(unsigned char *)t->client_ca_pem, (unsigned)strlen(t->client_ca_pem)};
        int n = gnutls_certificate_set_x509_trust_mem(g->cred, &ca, GNUTLS_X509_FMT_PEM);
        rc = n > 0 ? 0 : n == 0 ? GNUTLS_E_NO_CERTIFICATE_FOUND : n;
    }
    if (rc == 0) rc = gnutls_priority_init(&g->prio, NULL, NULL); /* the system's defaults */
    if (rc != 0) return MM_ERROR(MM_ERR_INVALID, "gRPC TLS from tls_cert / tls_key / tls_client_ca: %s", gnutls_strerror(rc));
    return MM_OK;
}

static void guard_free(mm_h2_guard *g) {
    while (g->conns) conn_close(g, g->conns);
    if (g->listen_fd >= 0) close(g->listen_fd);
    if (g->epoll_fd >= 0) close(g->epoll_fd);
    if (g->wake_fd >= 0) close(g->wake_fd);
    if (g->prio) gnutls_priority_deinit(g->prio);
    if (g->cred) gnutls_certificate_free_credentials(g->cred);
    if (g->insecure) grpc_server_credentials_release(g->insecure);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

mm_status mm_h2_guard_open(const mm_h2_guard_params *p, mm_h2_guard **out) {
    *out = NULL;
    mm_h2_guard *g = calloc(1, sizeof *g);
    CHECK(CHECK_ALLOC(g));
    g->p = *p;
    g->listen_fd = g->epoll_fd = g->wake_fd = -1;
    g->door_open = 1;
    pthread_mutex_init(&g->mu, NULL);
    g->insecure = grpc_insecure_server_credentials_create();
    mm_status rc = MM_OK;
    if (p->tls && p->tls->cert_pem && (rc = tls_setup(g)) != MM_OK) goto fail;
    if ((rc = mm_tcp_listen("listen", p->listen, &g->listen_fd)) != MM_OK) goto fail;
    int fl = fcntl(g->listen_fd, F_GETFL);
    if (fl < 0 || fcntl(g->listen_fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        rc = MM_ERROR(MM_ERR_IO, "gRPC door: nonblocking listen socket: %s", strerror(errno));
        goto fail;
    }
    g->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    g->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (g->epoll_fd < 0 || g->wake_fd < 0) {
        rc = MM_ERROR(MM_ERR_IO, "gRPC door: epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    g->e_listen = (end_ref){NULL, 0, 0};
    g->e_wake = (end_ref){NULL, 0, 0};
    set_mask(g, g->listen_fd, &g->e_listen, EPOLLIN);
    set_mask(g, g->wake_fd, &g->e_wake, EPOLLIN);
    *out = g;
    return MM_OK;
fail:
    guard_free(g);
    return rc;
}

mm_status mm_h2_guard_run(mm_h2_guard *g, grpc_server *server) {
    g->server = server;
    if (pthread_create(&g->thread, NULL, guard_main, g) != 0)
        return MM_ERROR(MM_ERR_INTERNAL, "gRPC door: cannot start its thread");
    g->started = 1;
    return MM_OK;
}

void mm_h2_guard_peer(mm_h2_guard *g, const char *grpc_peer, char *out, size_t cap) {
    snprintf(out, cap, "%s", grpc_peer);
    int fd;
    if (!g || sscanf(grpc_peer, "fd:%d", &fd) != 1) return;
    pthread_mutex_lock(&g->mu);
    for (const conn *c = g->conns; c; c = c->next)
        if (c->grpc_fd == fd) {
            snprintf(out, cap, "%s", c->peer);
            break;
        }
    pthread_mutex_unlock(&g->mu);
}

void mm_h2_guard_close_door(mm_h2_guard *g) {
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    g->door_open = 0;
    pthread_mutex_unlock(&g->mu);
}

void mm_h2_guard_stop(mm_h2_guard *g) {
    if (!g) return;
    mm_h2_guard_close_door(g);
    if (g->started) {
        g->stopping = 1;
        uint64_t one = 1;
        if (write(g->wake_fd, &one, sizeof one) < 0) { /* the 250 ms poll ends it anyway */
        }
        pthread_join(g->thread, NULL);
    }
    guard_free(g);
}
