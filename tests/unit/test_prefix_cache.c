/* Prefix caching in the scheduler and the KV block manager, without a network or a
 * model: a fake pipeline that keeps K/V in its own block memory, as the stages do.
 * The "K/V" of row r is a hash chained over the K/V of row r - 1, read back from the
 * block table, and the row itself; the next token is a function of the last row's
 * K/V and the sampler state. So a shared block with the wrong contents, a write into
 * a block another sequence holds, or a block evicted while held, changes the output;
 * and each output is checked at once against the same chain computed from the
 * sequence's own rows (the truth, no cache involved). Cases: hits ending mid-prompt,
 * a whole prompt cached (its last token still computed), hits across an input image
 * (same image: hit; another image: none), generated visual tokens never shared,
 * eviction under memory pressure (least recently released first), preemption of
 * sequences holding shared blocks with P micro-batches in flight, and the cache on
 * vs off giving identical outputs for a mixed workload with fewer rows computed. */
#include <stdlib.h>
#include <string.h>

#include "scheduler/scheduler.h"
#include "tests/testutil.h"

#define EOS 999
#define IMG_START 998
#define VDIM 4
#define IMG_ROWS 20 /* visual rows per image: images straddle blocks */
#define MAX_BLOCKS 512
#define BS 16

/* ---------------------------------------------------------------- the fake pipeline */

static uint64_t kv_mem[MAX_BLOCKS * BS]; /* one "stage"'s K/V, by block and slot */
static int violations;
static uint64_t rows_computed;

static uint64_t mix(uint64_t h, uint64_t x) {
    h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

static uint64_t row_value(const mm_seq *seq, int32_t r, int32_t *vis) {
    if (seq->tokens[r] >= 0) return (uint64_t)seq->tokens[r];
    uint32_t bits[VDIM];
    memcpy(bits, seq->visual + (size_t)(*vis)++ * VDIM, sizeof bits);
    return ((uint64_t)bits[0] << 32 | bits[1]) ^ ((uint64_t)bits[2] << 16) ^ bits[3] ^ 0x5555ull;
}

/* The K/V of rows [0, n) from the rows themselves: what the cache must reproduce. */
static uint64_t truth(const mm_seq *seq, int32_t n) {
    uint64_t h = 1469598103934665603ull;
    int32_t vis = 0;
    for (int32_t r = 0; r < n; r++) h = mix(h, row_value(seq, r, &vis));
    return h;
}

static uint64_t *slot(const mm_seq *seq, int32_t r) { return &kv_mem[(size_t)seq->kv.blocks[r / BS] * BS + r % BS]; }

/* Is block b in the table of a live sequence other than self? (then nobody may write it) */
static mm_seq *live[256];
static int n_live;
static int held_by_other(const mm_seq *self, int32_t b) {
    for (int i = 0; i < n_live; i++)
        if (live[i] && live[i] != self)
            for (int32_t k = 0; k < live[i]->kv.n_blocks; k++)
                if (live[i]->kv.blocks[k] == b) return 1;
    return 0;
}

/* Runs one step's entries through the fake stage, then hands the results back. */
static int complete(mm_sched *s, mm_step *st) {
    mm_seq_result res[64];
    float vec[64][VDIM];
    int n = 0;
    for (int i = 0; i < st->n; i++) {
        mm_step_entry *e = &st->e[i];
        mm_seq *seq = e->seq;
        if (e->pos + e->n_rows > seq->kv.n_blocks * BS) violations++;
        int32_t vis = mm_seq_visual_index(seq, e->pos);
        uint64_t h = e->pos ? *slot(seq, e->pos - 1) : 1469598103934665603ull; /* read back: may be a shared block */
        if (e->pos && h != truth(seq, e->pos)) violations++;
        for (int32_t r = e->pos; r < e->pos + e->n_rows; r++) {
            if (held_by_other(seq, seq->kv.blocks[r / BS])) violations++; /* a write into a shared block */
            h = mix(h, row_value(seq, r, &vis));
            *slot(seq, r) = h;
        }
        rows_computed += (uint64_t)e->n_rows;
        if (e->output == MM_OUT_NONE) continue;
        if (h != truth(seq, e->pos + e->n_rows)) violations++;
        uint64_t x = mix(h, seq->rng);
        res[n] = (mm_seq_result){.seq_id = seq->id, .token = (int32_t)(x % 900), .rng = seq->rng * 6364136223846793005ull + 1};
        if (e->output == MM_OUT_VISUAL) {
            for (int d = 0; d < VDIM; d++) vec[n][d] = (float)((x >> (8 * d)) & 0xff) / 256.0f;
            res[n].visual = vec[n];
        }
        n++;
    }
    mm_status rc = mm_sched_step_done(s, st, res, n);
    mm_sched_step_release(s, st);
    return rc == MM_OK;
}

/* ---------------------------------------------------------------- requests */

typedef struct {
    int32_t prompt[512];
    int32_t n_prompt;
    float visual[8 * IMG_ROWS * VDIM];
    uint8_t keys[8][MM_IMAGE_KEY_BYTES];
    int32_t n_images;
    int32_t max_new, image_left;
    uint64_t seed;
    /* results */
    int32_t out[512];
    int n_out;
    int32_t first_pos; /* where its first step started */
    mm_seq *seq;
    int done;
} req;

static mm_sched_params params(int32_t budget, int32_t P, int32_t blocks, int cache) {
    mm_sched_params p = {.max_batch_tokens = budget, .max_batch_seqs = 16, .max_in_flight = P, .max_waiting = 256,
                         .kv_blocks = blocks, .kv_block_size = BS, .max_context = 2048, .n_eos = 1,
                         .image_start_id = IMG_START, .image_tokens = IMG_ROWS, .visual_dim = VDIM,
                         .prefix_cache = cache};
    p.eos_ids[0] = EOS;
    return p;
}

/* text: n tokens from a stream named by id; prompts sharing a stream share a prefix */
static void text(req *q, uint64_t stream, int32_t n) {
    for (int32_t i = 0; i < n; i++) q->prompt[q->n_prompt++] = (int32_t)((stream * 131 + (uint64_t)i * 17) % 900);
}

/* one input image: its rows, vectors from its name, its key from its name */
static void image(req *q, int name) {
    for (int32_t t = 0; t < IMG_ROWS; t++) {
        for (int d = 0; d < VDIM; d++)
            q->visual[((size_t)q->n_images * IMG_ROWS + (size_t)t) * VDIM + (size_t)d] = (float)(name * 7 + t * 3 + d) / 97.0f;
        q->prompt[q->n_prompt++] = -1;
    }
    memset(q->keys[q->n_images], 0, MM_IMAGE_KEY_BYTES);
    q->keys[q->n_images][0] = (uint8_t)name, q->keys[q->n_images][1] = 0xAB;
    q->n_images++;
}

static void submit(mm_sched *s, req *q, uint64_t id) {
    mm_sampling samp = {0.7f, 1, 0};
    q->n_out = 0, q->done = 0, q->first_pos = -1;
    EXPECT(mm_sched_add(s, id, q->prompt, q->n_prompt, q->visual, q->n_images ? (const uint8_t(*)[MM_IMAGE_KEY_BYTES])q->keys : NULL,
                        q->n_images, q->max_new, &samp, q->seed, q->image_left, q, &q->seq) == MM_OK,
           "add %llu", (unsigned long long)id);
    live[n_live++] = q->seq;
}

static void forget(mm_seq *seq) {
    for (int i = 0; i < n_live; i++)
        if (live[i] == seq) live[i] = live[--n_live];
}

/* Runs everything submitted to completion with up to P steps in flight (FIFO). */
static int run(mm_sched *s) {
    mm_step *fifo[16];
    int nf = 0, steps = 0;
    while (steps < 100000) {
        mm_step *st;
        if (mm_sched_next_step(s, &st) != MM_OK) return -1;
        if (st) {
            for (int i = 0; i < st->n; i++) {
                req *q = st->e[i].seq->user;
                if (q->first_pos < 0) q->first_pos = st->e[i].pos;
            }
            fifo[nf++] = st;
            steps++;
            continue;
        }
        if (nf == 0) break;
        mm_step *done = fifo[0];
        memmove(fifo, fifo + 1, (size_t)(nf - 1) * sizeof *fifo);
        nf--;
        mm_step_entry ents[64];
        memcpy(ents, done->e, (size_t)done->n * sizeof *ents);
        int ne = done->n;
        if (!complete(s, done)) return -3;
        for (int i = 0; i < ne; i++) {
            mm_seq *seq = ents[i].seq;
            req *q = seq->user;
            if (ents[i].output != MM_OUT_NONE) q->out[q->n_out++] = seq->tokens[seq->n_tokens - 1];
            if (seq->finish != MM_FINISH_NONE && !q->done) {
                q->done = 1;
                forget(seq);
                mm_sched_remove(s, seq);
            }
        }
    }
    return steps;
}

static mm_sched_stats stats(const mm_sched *s) {
    mm_sched_stats st;
    mm_sched_get_stats(s, &st);
    return st;
}

static int same_out(const req *a, const req *b) {
    return a->n_out == b->n_out && !memcmp(a->out, b->out, sizeof(int32_t) * (size_t)a->n_out);
}

/* ---------------------------------------------------------------- cases */

static void test_hits_text(void) {
    mm_sched_params p = params(64, 1, 256, 1);
    mm_sched *s;
    mm_sched_init(&p, &s);
    static req a, b, c, d;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b), memset(&c, 0, sizeof c), memset(&d, 0, sizeof d);
    text(&a, 1, 40), text(&a, 2, 9), a.max_new = 20, a.seed = 1; /* 49 rows */
    text(&b, 1, 40), text(&b, 3, 9), b.max_new = 5, b.seed = 2; /* shares 40 rows: 2 full blocks */
    submit(s, &a, 1);
    EXPECT(run(s) > 0 && a.done && a.first_pos == 0, "a runs from 0");
    mm_sched_stats st = stats(s);
    /* a's 49 prompt + 19 computed generated rows: 4 full blocks published, all released */
    EXPECT(st.kv_blocks_used == 0 && st.kv_blocks_cached == 4, "after a: %d used, %d cached", st.kv_blocks_used,
           st.kv_blocks_cached);
    submit(s, &b, 2);
    run(s);
    st = stats(s);
    EXPECT(b.done && b.first_pos == 32, "b's prefill starts after the 2 shared blocks (pos %d)", b.first_pos);
    EXPECT(st.prefix_queries == 49 + 49 && st.prefix_hits == 32, "queries %llu hits %llu",
           (unsigned long long)st.prefix_queries, (unsigned long long)st.prefix_hits);
    /* a whole prompt cached (48 rows = 3 full blocks, c = a's first 48 rows): the
     * block with its last row is computed again, the output is the truth's */
    memcpy(c.prompt, a.prompt, 48 * sizeof(int32_t)), c.n_prompt = 48, c.max_new = 3, c.seed = 3;
    submit(s, &c, 3);
    run(s);
    EXPECT(c.done && c.first_pos == 32, "whole prompt cached: the last block is computed (pos %d)", c.first_pos);
    /* a prompt one row past a cached block: only that row is computed */
    memcpy(d.prompt, a.prompt, 33 * sizeof(int32_t)), d.n_prompt = 33, d.max_new = 3, d.seed = 4;
    submit(s, &d, 4);
    run(s);
    EXPECT(d.done && d.first_pos == 32, "33 rows: 1 computed (pos %d)", d.first_pos);
    /* a re-sent, with its own answer appended (a chat's next turn): the generated
     * text rows were published too */
    static req a2;
    memset(&a2, 0, sizeof a2);
    memcpy(a2.prompt, a.prompt, 49 * sizeof(int32_t)), a2.n_prompt = 49;
    for (int i = 0; i < a.n_out; i++) a2.prompt[a2.n_prompt++] = a.out[i];
    text(&a2, 9, 12), a2.max_new = 4, a2.seed = 5; /* 49 + 20 + 12 = 81 rows */
    submit(s, &a2, 5);
    run(s);
    EXPECT(a2.done && a2.first_pos == 64, "next turn: a's 4 full blocks reused, prompt and answer (pos %d)", a2.first_pos);
    EXPECT(violations == 0, "text hits: %d violations", violations);
    EXPECT(stats(s).kv_blocks_used == 0, "all released");
    mm_sched_free(s);
}

static void test_hits_images(void) {
    mm_sched_params p = params(64, 1, 256, 1);
    mm_sched *s;
    mm_sched_init(&p, &s);
    static req q[5];
    memset(q, 0, sizeof q);
    /* 10 text rows, image 1 (rows 10..29), 30 text rows: 60 rows */
    for (int i = 0; i < 4; i++) {
        text(&q[i], 1, 10);
        image(&q[i], i == 2 ? 2 : 1);
        text(&q[i], i == 3 ? 5 : 4, 30);
        q[i].max_new = 4, q[i].seed = 7;
    }
    submit(s, &q[0], 1);
    run(s);
    submit(s, &q[1], 2); /* the same image and text: hit across the image, 3 blocks */
    run(s);
    EXPECT(q[1].done && q[1].first_pos == 48, "same image: the 3 blocks before the last are reused (pos %d)", q[1].first_pos);
    EXPECT(same_out(&q[0], &q[1]), "same image: the same output as computed");
    submit(s, &q[2], 3); /* another image at the same place: only the block before it */
    run(s);
    EXPECT(q[2].done && q[2].first_pos == 0, "other image in block 0: nothing reused (pos %d)", q[2].first_pos);
    submit(s, &q[3], 4); /* same image, other text after it: blocks up to the text's change */
    run(s);
    EXPECT(q[3].done && q[3].first_pos == 16, "same image, other text from row 30: 1 block reused (pos %d)",
           q[3].first_pos);
    /* image rows without keys are never shared */
    memcpy(&q[4], &q[0], sizeof q[0]);
    q[4].n_images = 0; /* no keys: the -1 rows are anonymous */
    mm_sampling samp = {0.7f, 1, 0};
    EXPECT(mm_sched_add(s, 5, q[4].prompt, q[4].n_prompt, q[4].visual, NULL, 0, 4, &samp, q[4].seed, 0, &q[4], &q[4].seq) == MM_OK,
           "add without keys");
    q[4].first_pos = -1, q[4].n_out = 0, q[4].done = 0;
    live[n_live++] = q[4].seq;
    run(s);
    EXPECT(q[4].done && q[4].first_pos == 0 && same_out(&q[4], &q[0]), "no keys: block 0 holds an image row, not reused (pos %d)",
           q[4].first_pos);
    /* generated visual rows: the block holding the first one and all after stay private */
    static req g, g2;
    memset(&g, 0, sizeof g), memset(&g2, 0, sizeof g2);
    text(&g, 7, 31), g.prompt[g.n_prompt++] = IMG_START, g.image_left = IMG_ROWS, g.max_new = IMG_ROWS + 20;
    mm_sched_stats before = stats(s);
    submit(s, &g, 6);
    run(s);
    mm_sched_stats after = stats(s);
    EXPECT(g.done && after.kv_blocks_cached - before.kv_blocks_cached == 2,
           "generated image: only the 2 prompt blocks are published (%d new)", after.kv_blocks_cached - before.kv_blocks_cached);
    EXPECT(violations == 0, "image hits: %d violations", violations);
    mm_sched_free(s);
}

static void test_eviction(void) {
    /* 12 blocks: each request needs 5 (66 rows + 4 new); three requests' prefixes cannot stay */
    mm_sched_params p = params(64, 1, 12, 1);
    mm_sched *s;
    mm_sched_init(&p, &s);
    static req q[4], again;
    memset(q, 0, sizeof q), memset(&again, 0, sizeof again);
    for (int i = 0; i < 4; i++) text(&q[i], 10 + (uint64_t)i, 66), q[i].max_new = 4, q[i].seed = (uint64_t)i;
    for (int i = 0; i < 4; i++) submit(s, &q[i], (uint64_t)i + 1), run(s);
    mm_sched_stats st = stats(s);
    EXPECT(st.prefix_evictions > 0 && st.kv_blocks_cached <= 12 && st.kv_blocks_used == 0, "evictions %llu cached %d",
           (unsigned long long)st.prefix_evictions, st.kv_blocks_cached);
    /* the most recent prefix survives, the oldest does not */
    memcpy(&again, &q[3], sizeof again);
    submit(s, &again, 10);
    run(s);
    EXPECT(again.first_pos == 64 && same_out(&again, &q[3]), "latest prefix kept (pos %d)", again.first_pos);
    memcpy(&again, &q[0], sizeof again);
    submit(s, &again, 11);
    run(s);
    EXPECT(again.first_pos == 0 && same_out(&again, &q[0]), "oldest prefix evicted (pos %d)", again.first_pos);
    EXPECT(violations == 0, "eviction: %d violations", violations);
    mm_sched_free(s);
}

/* Many requests sharing prefixes at once on a tight cache with P in flight: shared
 * blocks are held by preempted and running sequences alike. The cache on and off
 * give the same outputs; on computes fewer rows. */
static uint64_t mixed(int cache, int32_t blocks, int32_t P, req *q, int n, uint64_t *preemptions) {
    mm_sched_params p = params(40, P, blocks, cache);
    mm_sched *s;
    mm_sched_init(&p, &s);
    rows_computed = 0;
    for (int i = 0; i < n; i++) {
        memset(&q[i], 0, sizeof q[i]);
        text(&q[i], 100 + (uint64_t)(i % 3), 20 + 7 * (i % 3)); /* 3 system prompts */
        if (i % 4 == 1) image(&q[i], 1 + i % 2);
        text(&q[i], 200 + (uint64_t)i, 5 + i % 11);
        q[i].max_new = 6 + i % 9, q[i].seed = (uint64_t)i % 5;
        submit(s, &q[i], (uint64_t)i + 1);
    }
    EXPECT(run(s) > 0, "mixed run (cache %d, %d blocks, P %d)", cache, blocks, P);
    for (int i = 0; i < n; i++) EXPECT(q[i].done && q[i].n_out == q[i].max_new, "request %d finished", i);
    mm_sched_stats st = stats(s);
    EXPECT(st.kv_blocks_used == 0 && st.running == 0 && st.waiting == 0, "nothing held (%d used)", st.kv_blocks_used);
    EXPECT(cache || st.kv_blocks_cached == 0, "off: nothing cached");
    *preemptions = st.preemptions;
    mm_sched_free(s);
    return rows_computed;
}

static void test_mixed_on_off(void) {
    enum { N = 24 };
    static req off[N], on[N], tight[N];
    uint64_t pre_off, pre_on, pre_tight;
    uint64_t rows_off = mixed(0, 512, 3, off, N, &pre_off);
    uint64_t rows_on = mixed(1, 512, 3, on, N, &pre_on);
    mixed(1, 14, 2, tight, N, &pre_tight);
    for (int i = 0; i < N; i++) {
        EXPECT(same_out(&off[i], &on[i]), "request %d: cache on differs from off", i);
        EXPECT(same_out(&off[i], &tight[i]), "request %d: tight cache (preemption) differs from off", i);
    }
    EXPECT(rows_on < rows_off, "the cache computes fewer rows (%llu vs %llu)", (unsigned long long)rows_on,
           (unsigned long long)rows_off);
    EXPECT(pre_tight > 0, "the tight cache preempts (%llu)", (unsigned long long)pre_tight);
    EXPECT(violations == 0, "mixed: %d violations", violations);
}

int main(void) {
    test_hits_text();
    test_hits_images();
    test_eviction();
    test_mixed_on_off();
    return mm_test_finish("test_prefix_cache");
}
