/* See h2_filter.h. Frame layout (RFC 9113 4.1): length (24 bits), type, flags, stream id
 * (31 bits); the client starts with a fixed 24-byte preface. */
#include "h2_filter.h"

#include <string.h>

enum { T_DATA = 0, T_HEADERS = 1, T_PRIORITY = 2, T_RST_STREAM = 3, T_SETTINGS = 4, T_PUSH_PROMISE = 5,
       T_PING = 6, T_CONTINUATION = 9 };
enum { F_END_STREAM = 0x1, F_ACK = 0x1, F_END_HEADERS = 0x4 };

static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define PREFACE_LEN 24u

const mm_h2_limits MM_H2_DEFAULT_LIMITS = {
    .max_header_block = 32768, .max_block_frames = 16,
    .resets_per_s = 100, .reset_burst = 200,
    .controls_per_s = 500, .control_burst = 1000,
};

void mm_h2_filter_init(mm_h2_filter *f, const mm_h2_limits *lim, double now_ms) {
    memset(f, 0, sizeof *f);
    f->lim = *lim;
    f->reset_tokens = lim->reset_burst;
    f->control_tokens = lim->control_burst;
    f->t_last_ms = now_ms;
}

int mm_h2_filter_preface_done(const mm_h2_filter *f) { return f->preface_matched == PREFACE_LEN; }

const char *mm_h2_verdict_name(mm_h2_verdict v) {
    static const char *const NAMES[MM_H2_VERDICT_COUNT] = {"ok", "bad_preface", "header_block", "reset_rate",
                                                            "control_rate"};
    return (unsigned)v < MM_H2_VERDICT_COUNT ? NAMES[v] : "?";
}

/* Token buckets: refilled at rate per second up to burst on every frame, one token
 * taken per counted frame. */
static void refill(double *tokens, double rate, double burst, double dt_s) {
    *tokens += rate * dt_s;
    if (*tokens > burst) *tokens = burst;
}

static int take(double *tokens) {
    if (*tokens < 1) return 0;
    *tokens -= 1;
    return 1;
}

/* A whole frame header has arrived: check it against the limits. */
static mm_h2_verdict on_frame(mm_h2_filter *f, double now_ms) {
    const uint8_t *h = f->head;
    uint32_t len = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 | h[2];
    uint8_t type = h[3], flags = h[4];
    double dt_s = now_ms > f->t_last_ms ? (now_ms - f->t_last_ms) / 1e3 : 0;
    f->t_last_ms = now_ms > f->t_last_ms ? now_ms : f->t_last_ms;
    f->payload_left = len;
    f->frames++;
    /* Header blocks: HEADERS or PUSH_PROMISE opens one, CONTINUATION frames extend it. */
    if (type == T_HEADERS || type == T_PUSH_PROMISE || (type == T_CONTINUATION && f->in_block)) {
        if (type != T_CONTINUATION) f->block_bytes = 0, f->block_frames = 0;
        f->block_bytes += len;
        f->block_frames++;
        if (f->block_bytes > f->lim.max_header_block || f->block_frames > f->lim.max_block_frames)
            return MM_H2_HEADER_BLOCK;
        f->in_block = !(flags & F_END_HEADERS);
    }
    /* (A CONTINUATION outside a block, or any other frame inside one, is a protocol error
     * that gRPC answers itself; nothing to bound.) */
    refill(&f->reset_tokens, f->lim.resets_per_s, f->lim.reset_burst, dt_s);
    refill(&f->control_tokens, f->lim.controls_per_s, f->lim.control_burst, dt_s);
    if (type == T_RST_STREAM && !take(&f->reset_tokens))
        return MM_H2_RESET_RATE;
    int control = type == T_PRIORITY || ((type == T_PING || type == T_SETTINGS) && !(flags & F_ACK)) ||
                  (type == T_DATA && len == 0 && !(flags & F_END_STREAM));
    if (control && !take(&f->control_tokens))
        return MM_H2_CONTROL_RATE;
    return MM_H2_OK;
}

mm_h2_verdict mm_h2_filter_feed(mm_h2_filter *f, const uint8_t *p, size_t n, double now_ms) {
    size_t i = 0;
    while (i < n && f->preface_matched < PREFACE_LEN) {
        if (p[i] != (uint8_t)PREFACE[f->preface_matched]) return MM_H2_BAD_PREFACE;
        f->preface_matched++, i++;
    }
    while (i < n) {
        if (f->payload_left) { /* skip payload bytes: counted, not read */
            size_t k = n - i < f->payload_left ? n - i : f->payload_left;
            f->payload_left -= (uint32_t)k;
            i += k;
            continue;
        }
        f->head[f->head_len++] = p[i++];
        if (f->head_len == sizeof f->head) {
            f->head_len = 0;
            mm_h2_verdict v = on_frame(f, now_ms);
            if (v != MM_H2_OK) return v;
        }
    }
    return MM_H2_OK;
}
