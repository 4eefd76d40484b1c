/* The gRPC door's HTTP/2 frame checks (coordinator/h2_filter.h): a normal client's
 * frames pass whether they arrive whole or byte by byte; a wrong preface, a header block
 * too long or in too many CONTINUATION frames, resets and control frames beyond their
 * budget are each caught with their own verdict, and the budgets refill with time. */
#include <stdio.h>
#include <string.h>

#include "coordinator/h2_filter.h"
#include "tests/testutil.h"

enum { DATA = 0, HEADERS = 1, PRIORITY = 2, RST = 3, SETTINGS = 4, PING = 6, WINDOW = 8, CONT = 9 };
enum { END_STREAM = 1, ACK = 1, END_HEADERS = 4 };

static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* Appends a frame with a zero payload of len bytes; returns the new length. */
static size_t frame(uint8_t *buf, size_t at, uint32_t len, uint8_t type, uint8_t flags, uint32_t stream) {
    uint8_t *h = buf + at;
    h[0] = (uint8_t)(len >> 16), h[1] = (uint8_t)(len >> 8), h[2] = (uint8_t)len;
    h[3] = type, h[4] = flags;
    h[5] = (uint8_t)(stream >> 24), h[6] = (uint8_t)(stream >> 16), h[7] = (uint8_t)(stream >> 8), h[8] = (uint8_t)stream;
    memset(h + 9, 0, len);
    return at + 9 + len;
}

static size_t preface(uint8_t *buf) {
    memcpy(buf, PREFACE, 24);
    return frame(buf, 24, 6, SETTINGS, 0, 0);
}

/* Feeds buf whole (step 0) or in pieces of step bytes; the first verdict that is not OK. */
static mm_h2_verdict feed(mm_h2_filter *f, const uint8_t *buf, size_t n, size_t step, double now_ms) {
    if (!step) return mm_h2_filter_feed(f, buf, n, now_ms);
    for (size_t i = 0; i < n; i += step) {
        mm_h2_verdict v = mm_h2_filter_feed(f, buf + i, n - i < step ? n - i : step, now_ms);
        if (v != MM_H2_OK) return v;
    }
    return MM_H2_OK;
}

static uint8_t buf[1 << 23]; /* 8 MiB: 200 calls of ~21 KiB */

static void check_normal_client(void) {
    size_t steps[] = {0, 1, 7, 9, 10};
    for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
        size_t n = preface(buf);
        n = frame(buf, n, 0, SETTINGS, ACK, 0);
        for (uint32_t st = 1; st < 400; st += 2) { /* 200 calls, a 20 KiB header block in two frames */
            n = frame(buf, n, 16384, HEADERS, 0, st);
            n = frame(buf, n, 4096, CONT, END_HEADERS, st);
            n = frame(buf, n, 1000, DATA, 0, st);
            n = frame(buf, n, 5, DATA, END_STREAM, st);
            n = frame(buf, n, 4, WINDOW, 0, 0);
            n = frame(buf, n, 8, PING, ACK, 0);
        }
        mm_h2_filter f;
        mm_h2_filter_init(&f, &MM_H2_DEFAULT_LIMITS, 0);
        EXPECT(!mm_h2_filter_preface_done(&f), "preface before any byte");
        mm_h2_verdict v = feed(&f, buf, n, steps[s], 0);
        EXPECT(v == MM_H2_OK, "step %zu: %s", steps[s], mm_h2_verdict_name(v));
        EXPECT(mm_h2_filter_preface_done(&f), "step %zu", steps[s]);
        EXPECT(f.frames == 2 + 200 * 6, "step %zu: %llu frames", steps[s], (unsigned long long)f.frames);
    }
}

static void check_preface(void) {
    mm_h2_filter f;
    mm_h2_filter_init(&f, &MM_H2_DEFAULT_LIMITS, 0);
    EXPECT(mm_h2_filter_feed(&f, (const uint8_t *)"PRI * HTTP/2.0", 14, 0) == MM_H2_OK, "a partial preface");
    EXPECT(!mm_h2_filter_preface_done(&f), "partial");
    mm_h2_filter_init(&f, &MM_H2_DEFAULT_LIMITS, 0);
    const char *http1 = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    EXPECT(mm_h2_filter_feed(&f, (const uint8_t *)http1, strlen(http1), 0) == MM_H2_BAD_PREFACE, "HTTP/1.1");
    mm_h2_filter_init(&f, &MM_H2_DEFAULT_LIMITS, 0);
    uint8_t tls_hello[] = {0x16, 0x03, 0x01, 0x02, 0x00};
    EXPECT(mm_h2_filter_feed(&f, tls_hello, sizeof tls_hello, 0) == MM_H2_BAD_PREFACE, "a TLS hello on plain text");
}

static void check_header_blocks(void) {
    mm_h2_filter f;
    /* a CONTINUATION flood: 15 KiB frames, never END_HEADERS; caught at the third (> 32 KiB) */
    size_t n = preface(buf);
    n = frame(buf, n, 15000, HEADERS, 0, 1);
    for (int i = 0; i < 60; i++) n = frame(buf, n, 15000, CONT, 0, 1);
    mm_h2_filter_init(&f, &MM_H2_DEFAULT_LIMITS, 0);
    EXPECT(feed(&f, buf, n, 4096, 0) == MM_H2_HEADER_BLOCK, "CONTINUATION flood");
    EXPECT(f.frames == 1 + 3, "caught at frame %llu", (unsigned long long)f.frames);
    /* empty CONTINUATION frames: caught by the frame count */
    n = preface(buf);
    n = frame(buf, n, 10, HEADERS, 0, 1);
    for (int i = 0; i < 100; i++) n = frame(buf, n, 0, CONT, 0, 1);
    mm_h2_filter_init(&f, &MM_H2_DEFAULT_LIMITS, 0);
    EXPECT(feed(&f, buf, n, 0, 0) == MM_H2_HEADER_BLOCK, "empty CONTINUATIONs");
    EXPECT(f.frames == 1 + MM_H2_DEFAULT_LIMITS.max_block_frames + 1, "caught at frame %llu", (unsigned long long)f.frames);
    /* one HEADERS frame over the limit */
    n = preface(buf);
    n = frame(buf, n, MM_H2_DEFAULT_LIMITS.max_header_block + 1, HEADERS, END_HEADERS, 1);
    mm_h2_filter_init(&f, &MM_H2_DEFAULT_LIMITS, 0);
    EXPECT(feed(&f, buf, n, 0, 0) == MM_H2_HEADER_BLOCK, "one long HEADERS");
    /* exactly at the limit, then a new block starts from zero */
    n = preface(buf);
    n = frame(buf, n, MM_H2_DEFAULT_LIMITS.max_header_block - 100, HEADERS, 0, 1);
    n = frame(buf, n, 100, CONT, END_HEADERS, 1);
    n = frame(buf, n, MM_H2_DEFAULT_LIMITS.max_header_block, HEADERS, END_HEADERS, 3);
    mm_h2_filter_init(&f, &MM_H2_DEFAULT_LIMITS, 0);
    EXPECT(feed(&f, buf, n, 0, 0) == MM_H2_OK, "blocks at the limit");
}

static void check_budgets(void) {
    mm_h2_limits lim = MM_H2_DEFAULT_LIMITS;
    mm_h2_filter f;
    /* Rapid Reset: HEADERS + RST_STREAM pairs at one instant: the burst passes, the next fails */
    size_t n = preface(buf);
    for (uint32_t i = 0; i < (uint32_t)lim.reset_burst + 1; i++) {
        n = frame(buf, n, 20, HEADERS, END_HEADERS, 2 * i + 1);
        n = frame(buf, n, 4, RST, 0, 2 * i + 1);
    }
    mm_h2_filter_init(&f, &lim, 0);
    EXPECT(feed(&f, buf, n - 13, 0, 0) == MM_H2_OK, "the burst of resets");
    EXPECT(feed(&f, buf + n - 13, 13, 0, 0) == MM_H2_RESET_RATE, "one reset past the burst");
    /* the same pairs spread over time (at the refill rate) pass */
    mm_h2_filter_init(&f, &lim, 0);
    size_t at = preface(buf);
    EXPECT(feed(&f, buf, at, 0, 0) == MM_H2_OK, "preface");
    double t = 0;
    int ok = 1;
    for (uint32_t i = 0; i < 5 * (uint32_t)lim.reset_burst && ok; i++) {
        size_t m = frame(buf, 0, 20, HEADERS, END_HEADERS, 2 * i + 1);
        m = frame(buf, m, 4, RST, 0, 2 * i + 1);
        t += 1000.0 / lim.resets_per_s;
        ok = feed(&f, buf, m, 0, t) == MM_H2_OK;
    }
    EXPECT(ok, "resets at the budget's rate");
    /* PING flood (not ACKs): caught after the burst; SETTINGS ACKs and PING ACKs never count */
    n = preface(buf);
    for (int i = 0; i < 3000; i++) n = frame(buf, n, 8, PING, ACK, 0);
    for (int i = 0; i < 3000; i++) n = frame(buf, n, 0, SETTINGS, ACK, 0);
    mm_h2_filter_init(&f, &lim, 0);
    EXPECT(feed(&f, buf, n, 0, 0) == MM_H2_OK, "ACKs");
    n = preface(buf); /* the preface's SETTINGS took one token */
    for (int i = 0; i < (int)lim.control_burst; i++) n = frame(buf, n, 8, PING, 0, 0);
    mm_h2_filter_init(&f, &lim, 0);
    EXPECT(feed(&f, buf, n, 0, 0) == MM_H2_CONTROL_RATE, "PING flood");
    /* empty DATA frames without END_STREAM count as control frames; PRIORITY too */
    n = preface(buf);
    for (int i = 0; i < (int)lim.control_burst; i++) n = frame(buf, n, 0, i % 2 ? DATA : PRIORITY, 0, 1);
    mm_h2_filter_init(&f, &lim, 0);
    EXPECT(feed(&f, buf, n, 0, 0) == MM_H2_CONTROL_RATE, "empty DATA / PRIORITY flood");
}

int main(void) {
    check_normal_client();
    check_preface();
    check_header_blocks();
    check_budgets();
    EXPECT(!strcmp(mm_h2_verdict_name(MM_H2_RESET_RATE), "reset_rate"), "names");
    return mm_test_finish("test_h2_filter");
}
