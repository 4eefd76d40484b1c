/* See pool_zap.h. A ZAP request is: version "1.0", request id, domain, address,
 * identity, mechanism, then the mechanism's credentials (CURVE: the client's 32-byte
 * public key); the reply: version, request id, status code ("200" / "400"), status
 * text, user id, metadata. */
#include "pool_zap.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/curve_keys.h"
#include "common/log.h"

#define ZAP_FRAMES 7

struct mm_pool_zap {
    void *sock;          /* REP, used by the thread only */
    unsigned char *keys; /* [n, 32] admitted public keys */
    size_t n;
    pthread_t thread;
    int started;
};

static int admitted(const mm_pool_zap *z, const zmq_msg_t *key) {
    if (zmq_msg_size((zmq_msg_t *)key) != 32) return 0;
    for (size_t i = 0; i < z->n; i++)
        if (!memcmp(zmq_msg_data((zmq_msg_t *)key), z->keys + 32 * i, 32)) return 1;
    return 0;
}

static void *zap_main(void *arg) {
    mm_pool_zap *z = arg;
    for (;;) {
        zmq_msg_t f[ZAP_FRAMES];
        int n = 0, more = 1, dead = 0;
        while (more) { /* every frame of one request; extra ones are dropped */
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, z->sock, 0) < 0) {
                zmq_msg_close(&m);
                if (zmq_errno() == EINTR) continue;
                dead = 1; /* ETERM: the context is ending */
                break;
            }
            more = zmq_msg_more(&m);
            if (n < ZAP_FRAMES) f[n++] = m;
            else zmq_msg_close(&m);
        }
        if (dead) {
            for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
            break;
        }
        int ok = n == ZAP_FRAMES && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) &&
                 admitted(z, &f[6]);
        if (!ok) LOG_WARN("pools: refused a worker without an authorized CURVE key (pool_authorized_keys)");
        const char *code = ok ? "200" : "400", *text = ok ? "OK" : "key not authorized";
        zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(z->sock, n > 1 ? zmq_msg_data(&f[1]) : "", n > 1 ? zmq_msg_size(&f[1]) : 0, ZMQ_SNDMORE);
        zmq_send(z->sock, code, 3, ZMQ_SNDMORE);
        zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(z->sock, "", 0, ZMQ_SNDMORE);
        zmq_send(z->sock, "", 0, 0);
        for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
    }
    zmq_close(z->sock);
    z->sock = NULL;
    return NULL;
}

mm_status mm_pool_zap_start(void *zctx, const char *path, mm_pool_zap **out) {
    mm_pool_zap *z = calloc(1, sizeof *z);
    CHECK(CHECK_ALLOC(z));
    mm_status s = mm_curve_authorized_read(path, &z->keys, &z->n);
    if (s == MM_OK) {
        int zero = 0;
        z->sock = zmq_socket(zctx, ZMQ_REP);
        if (!z->sock || zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero) ||
            zmq_bind(z->sock, "inproc://zeromq.zap.01"))
            s = MM_ERROR(MM_ERR_IO, "pools: ZAP handler: %s", zmq_strerror(zmq_errno()));
    }
    if (s == MM_OK && pthread_create(&z->thread, NULL, zap_main, z) != 0)
        s = MM_ERROR(MM_ERR_INTERNAL, "pools: cannot start the ZAP thread");
    if (s != MM_OK) {
        if (z->sock) zmq_close(z->sock);
        free(z->keys);
        free(z);
        return s;
    }
    z->started = 1;
    LOG_INFO("pools: CURVE on, %zu worker keys admitted (%s)", z->n, path);
    *out = z;
    return MM_OK;
}

void mm_pool_zap_free(mm_pool_zap *z) {
    if (!z) return;
    if (z->started) pthread_join(z->thread, NULL);
    free(z->keys);
    free(z);
}
