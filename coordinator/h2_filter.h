/* What a client may send on an HTTP/2 connection before the gRPC core sees it (issue 21).
 * Debian's gRPC (1.51) keeps every byte of a header block that never ends (CONTINUATION
 * flood) and every stream a client opens and resets at once (Rapid Reset), so the
 * coordinator reads the client's bytes itself and checks them frame by frame: only frame
 * headers are read (9 bytes each); payloads are counted, never decoded or kept. A
 * connection that breaks a limit is closed; the verdict names the limit for the log and
 * the metrics. Pure: no I/O, no allocation. */
#ifndef MM_COORD_H2_FILTER_H
#define MM_COORD_H2_FILTER_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MM_H2_OK = 0,
    MM_H2_BAD_PREFACE,   /* not the HTTP/2 client preface ("PRI * HTTP/2.0...") */
    MM_H2_HEADER_BLOCK,  /* a HEADERS + CONTINUATION block too long, or in too many frames */
    MM_H2_RESET_RATE,    /* RST_STREAM faster than the budget (Rapid Reset) */
    MM_H2_CONTROL_RATE,  /* PING / SETTINGS / PRIORITY / empty DATA faster than the budget */
    MM_H2_VERDICT_COUNT
} mm_h2_verdict;

typedef struct {
    uint32_t max_header_block;   /* bytes of one header block (HEADERS + its CONTINUATIONs) */
    uint32_t max_block_frames;   /* frames of one header block */
    double resets_per_s;         /* RST_STREAM budget: refill rate and burst (token bucket) */
    double reset_burst;
    double controls_per_s;       /* control frames that make the server work (no ACKs) */
    double control_burst;
} mm_h2_limits;

/* The defaults: a 32 KiB block in 16 frames at most (gRPC's own metadata limit is 16 KiB
 * decoded), 100 resets/s after a burst of 200, 500 control frames/s after 1000. */
extern const mm_h2_limits MM_H2_DEFAULT_LIMITS;

typedef struct {
    mm_h2_limits lim;
    uint32_t preface_matched;   /* bytes of the 24-byte preface seen so far */
    uint8_t head[9];            /* the frame header being read */
    uint32_t head_len;          /* its bytes seen so far (0..9) */
    uint32_t payload_left;      /* payload bytes of the current frame still to come */
    int in_block;               /* inside a header block (no END_HEADERS yet) */
    uint32_t block_bytes, block_frames;
    double reset_tokens, control_tokens, t_last_ms;
    uint64_t frames;            /* frames seen, for tests and logs */
} mm_h2_filter;

void mm_h2_filter_init(mm_h2_filter *f, const mm_h2_limits *lim, double now_ms);
/* Reads the next n bytes the client sent; MM_H2_OK while it keeps within the limits. Once
 * a verdict is returned the connection is to be closed (later calls are undefined). */
mm_h2_verdict mm_h2_filter_feed(mm_h2_filter *f, const uint8_t *p, size_t n, double now_ms);
/* 1 once the whole client preface has arrived (the connection may go to gRPC). */
int mm_h2_filter_preface_done(const mm_h2_filter *f);
/* "ok", "bad_preface", "header_block", "reset_rate", "control_rate". */
const char *mm_h2_verdict_name(mm_h2_verdict v);

#endif
