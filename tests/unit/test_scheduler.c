/* Scheduler unit tests without a network or a model: a fake last stage whose next
 * token is a pure function of the sequence's rows, so a recomputed (preempted)
 * sequence must produce exactly what it produces alone. Checks the token budget,
 * chunked prefill, decodes first, at most P micro-batches in flight with a sequence in
 * at most one, preemption without deadlock, KV blocks back to zero, the bounded
 * queue, removal while in flight, EOS, image mode, and the step plan encoding. */
#include <stdlib.h>
#include <string.h>

#include "pipeline/step_plan.h"
#include "proto/internal.pb-c.h"
#include "scheduler/scheduler.h"
#include "tests/testutil.h"

#define VOCAB 1000
#define EOS 999
#define IMG_START 998
#define VDIM 4

/* next token = hash of every row so far (visual rows count by their first element) */
static int32_t fake_next(const mm_seq *seq) {
    uint32_t h = 2166136261u;
    int32_t v = 0;
    for (int32_t i = 0; i < seq->n_tokens; i++) {
        int32_t t = seq->tokens[i] >= 0 ? seq->tokens[i] : (int32_t)(seq->visual[(size_t)(v++) * VDIM] * 1000);
        h = (h ^ (uint32_t)t) * 16777619u;
    }
    return (int32_t)(h % 900);
}

static mm_sched_params params(int32_t budget, int32_t P, int32_t blocks) {
    mm_sched_params p = {.max_batch_tokens = budget, .max_batch_seqs = 16, .max_in_flight = P, .max_waiting = 64,
                         .kv_blocks = blocks, .kv_block_size = MM_KV_BLOCK_SIZE, .max_context = 2048, .n_eos = 1,
                         .image_start_id = IMG_START, .image_tokens = 3, .visual_dim = VDIM};
    p.eos_ids[0] = EOS;
    return p;
}

/* Completes one in-flight step with the fake stage; checks the plan's invariants. */
static int complete(mm_sched *s, mm_step *st, int32_t budget, int *violations) {
    mm_seq_result res[64];
    float vec[64][VDIM];
    int n = 0;
    if (st->n_rows > budget) (*violations)++;
    for (int i = 0; i < st->n; i++) {
        mm_step_entry *e = &st->e[i];
        if (e->pos + e->n_rows > e->seq->kv.n_blocks * MM_KV_BLOCK_SIZE) (*violations)++; /* blocks cover the rows */
        if (e->output == MM_OUT_NONE) continue;
        res[n] = (mm_seq_result){.seq_id = e->seq->id, .token = fake_next(e->seq), .rng = e->seq->rng + 1};
        if (e->output == MM_OUT_VISUAL) {
            for (int d = 0; d < VDIM; d++) vec[n][d] = (float)((fake_next(e->seq) + d) % 7) / 7.0f;
            res[n].visual = vec[n];
        }
        n++;
    }
    mm_status rc = mm_sched_step_done(s, st, res, n);
    mm_sched_step_release(s, st);
    return rc == MM_OK;
}

typedef struct {
    int32_t out[256];
    int n_out;
    mm_seq *seq;
    int done;
    mm_finish finish;
} req;

/* Runs n requests to completion, keeping up to P steps in flight (FIFO like the
 * pipeline). Returns the number of steps. */
static int run_all(mm_sched *s, req *r, int n, int32_t budget, int *violations) {
    mm_step *fifo[16];
    int nf = 0, steps = 0, left = n;
    while (left > 0 && steps < 100000) {
        mm_step *st;
        if (mm_sched_next_step(s, &st) != MM_OK) return -1;
        if (st) {
            for (int i = 0; i < st->n; i++)
                for (int f = 0; f < nf; f++)
                    for (int j = 0; j < fifo[f]->n; j++)
                        if (fifo[f]->e[j].seq == st->e[i].seq) (*violations)++; /* in two micro-batches */
            fifo[nf++] = st;
            steps++;
            if (nf > mm_sched_get_params(s)->max_in_flight) (*violations)++;
            continue;
        }
        if (nf == 0) return -2; /* nothing in flight and nothing to do: a deadlock */
        mm_step *done = fifo[0];
        memmove(fifo, fifo + 1, (size_t)(nf - 1) * sizeof *fifo);
        nf--;
        mm_step_entry ents[64];
        memcpy(ents, done->e, (size_t)done->n * sizeof *ents);
        int ne = done->n;
        if (!complete(s, done, budget, violations)) return -3;
        for (int i = 0; i < ne; i++) {
            mm_seq *seq = ents[i].seq;
            req *q = seq->user;
            if (ents[i].output != MM_OUT_NONE && seq->tokens[seq->n_tokens - 1] >= -1)
                q->out[q->n_out++] = seq->tokens[seq->n_tokens - 1];
            if (seq->finish != MM_FINISH_NONE && !q->done) {
                q->done = 1, q->finish = seq->finish;
                mm_sched_remove(s, seq);
                left--;
            }
        }
    }
    return steps;
}

static void add(mm_sched *s, req *q, uint64_t id, int32_t n_prompt, int32_t max_new) {
    int32_t prompt[512];
    for (int32_t i = 0; i < n_prompt; i++) prompt[i] = (int32_t)((id * 37 + (uint64_t)i * 11) % 900);
    mm_sampling samp = {0, 1, 0};
    memset(q, 0, sizeof *q);
    EXPECT(mm_sched_add(s, id, prompt, n_prompt, NULL, NULL, 0, max_new, &samp, id, 0, q, &q->seq) == MM_OK, "add %llu",
           (unsigned long long)id);
}

static void test_matches_solo(int32_t budget, int32_t P, int32_t blocks) {
    enum { N = 12 };
    req solo[N], batch[N];
    int viol = 0;
    for (int i = 0; i < N; i++) { /* each alone, plenty of blocks */
        mm_sched_params p = params(budget, 1, 4096);
        mm_sched *s;
        mm_sched_init(&p, &s);
        add(s, &solo[i], (uint64_t)i, 5 + 13 * i, 20 + i);
        run_all(s, &solo[i], 1, budget, &viol);
        mm_sched_free(s);
    }
    mm_sched_params p = params(budget, P, blocks);
    mm_sched *s;
    mm_sched_init(&p, &s);
    for (int i = 0; i < N; i++) add(s, &batch[i], (uint64_t)i, 5 + 13 * i, 20 + i);
    int steps = run_all(s, batch, N, budget, &viol);
    EXPECT(steps > 0, "budget %d P %d blocks %d: run failed (%d)", budget, P, blocks, steps);
    EXPECT(viol == 0, "%d invariant violations", viol);
    for (int i = 0; i < N; i++) {
        EXPECT(batch[i].done && batch[i].finish == MM_FINISH_LENGTH, "seq %d finished (%d)", i, batch[i].finish);
        EXPECT(batch[i].n_out == solo[i].n_out && !memcmp(batch[i].out, solo[i].out, sizeof(int32_t) * (size_t)solo[i].n_out),
               "seq %d: batched output differs from solo (budget %d, P %d, blocks %d)", i, budget, P, blocks);
        EXPECT(solo[i].n_out == 20 + i, "seq %d: %d tokens", i, solo[i].n_out);
    }
    mm_sched_stats st;
    mm_sched_get_stats(s, &st);
    EXPECT(st.kv_blocks_used == 0 && st.running == 0 && st.waiting == 0, "blocks %d running %d waiting %d",
           st.kv_blocks_used, st.running, st.waiting);
    if (blocks < 40) EXPECT(st.preemptions > 0, "a small cache should preempt (blocks %d)", blocks);
    mm_sched_free(s);
}

static void test_chunking_and_decode_first(void) {
    mm_sched_params p = params(8, 1, 256);
    mm_sched *s;
    mm_sched_init(&p, &s);
    req a, b;
    add(s, &a, 1, 3, 10);
    mm_step *st;
    mm_sched_next_step(s, &st); /* a: whole 3-token prompt */
    EXPECT(st && st->n == 1 && st->e[0].n_rows == 3 && st->e[0].output == MM_OUT_TOKEN, "prompt step");
    int viol = 0;
    complete(s, st, 8, &viol);
    add(s, &b, 2, 20, 10); /* long prompt: chunks of at most the budget left after a's decode */
    mm_sched_next_step(s, &st);
    EXPECT(st && st->n == 2 && st->e[0].seq == a.seq && st->e[0].n_rows == 1, "decode goes first");
    EXPECT(st && st->e[1].seq == b.seq && st->e[1].n_rows == 7 && st->e[1].output == MM_OUT_NONE, "chunk of 7");
    complete(s, st, 8, &viol);
    mm_sched_next_step(s, &st);
    EXPECT(st && st->e[1].n_rows == 7 && st->e[1].pos == 7, "second chunk at 7");
    complete(s, st, 8, &viol);
    mm_sched_next_step(s, &st);
    EXPECT(st && st->e[1].n_rows == 6 && st->e[1].output == MM_OUT_TOKEN, "last chunk samples");
    /* removal while in flight: blocks go when the step returns */
    mm_sched_remove(s, b.seq);
    mm_sched_stats stats;
    mm_sched_get_stats(s, &stats);
    EXPECT(stats.kv_blocks_used == 3, "b's 2 blocks + a's 1 block held in flight (%d)", stats.kv_blocks_used);
    complete(s, st, 8, &viol);
    mm_sched_get_stats(s, &stats);
    EXPECT(stats.kv_blocks_used == 1, "b's blocks freed (%d used)", stats.kv_blocks_used);
    mm_sched_remove(s, a.seq);
    mm_sched_get_stats(s, &stats);
    EXPECT(stats.kv_blocks_used == 0 && stats.running == 0, "all freed");
    EXPECT(viol == 0, "violations");
    mm_sched_free(s);
}

static void test_queue_eos_image(void) {
    mm_sched_params p = params(64, 1, 256);
    p.max_waiting = 2;
    mm_sched *s;
    mm_sched_init(&p, &s);
    req q[3];
    add(s, &q[0], 1, 4, 5);
    add(s, &q[1], 2, 4, 5);
    EXPECT(!mm_sched_can_accept(s), "queue of 2 is full");
    mm_step *st;
    mm_sched_next_step(s, &st);
    EXPECT(mm_sched_can_accept(s), "admitted: room again");
    /* EOS and image mode by hand-made results */
    mm_seq_result r[2] = {{.seq_id = 1, .token = EOS}, {.seq_id = 2, .token = IMG_START}};
    EXPECT(mm_sched_step_done(s, st, r, 2) == MM_OK, "done");
    EXPECT(q[0].seq->finish == MM_FINISH_STOP, "EOS stops");
    EXPECT(q[1].seq->image_left == 3, "image mode");
    mm_sched_step_release(s, st);
    mm_sched_remove(s, q[0].seq);
    for (int k = 0; k < 3; k++) {
        mm_sched_next_step(s, &st);
        EXPECT(st && st->e[0].output == MM_OUT_VISUAL, "visual output %d", k);
        float v[VDIM] = {0.5f, 0, 0, 0};
        mm_seq_result rv = {.seq_id = 2, .visual = v};
        mm_sched_step_done(s, st, &rv, 1);
        mm_sched_step_release(s, st);
    }
    EXPECT(q[1].seq->n_visual == 3 && q[1].seq->tokens[q[1].seq->n_tokens - 1] == -1, "3 visual rows");
    mm_sched_next_step(s, &st);
    EXPECT(st && st->e[0].output == MM_OUT_TOKEN && st->e[0].pos == 7, "text after the image");
    /* the plan carries the visual row as input */
    uint8_t *buf;
    size_t len;
    EXPECT(mm_step_plan_pack(s, st, &buf, &len) == MM_OK, "pack");
    Metamorph__Internal__StepPlan *pl = metamorph__internal__step_plan__unpack(NULL, len, buf);
    EXPECT(pl && pl->n_seqs == 1 && pl->seqs[0]->n_tokens == 1 && pl->seqs[0]->tokens[0] == -1, "plan row");
    EXPECT(pl && pl->seqs[0]->n_visual == VDIM && pl->seqs[0]->visual[0] == 0.5f, "plan visual");
    EXPECT(pl && pl->seqs[0]->n_block_table == 1 && pl->seqs[0]->output == METAMORPH__INTERNAL__OUTPUT_KIND__OUTPUT_TOKEN,
           "plan blocks/output");
    metamorph__internal__step_plan__free_unpacked(pl, NULL);
    free(buf);
    mm_sched_abort_in_flight(s);
    mm_sched_remove(s, q[1].seq);
    mm_sched_stats stats;
    mm_sched_get_stats(s, &stats);
    EXPECT(stats.kv_blocks_used == 0, "blocks back after abort (%d)", stats.kv_blocks_used);
    mm_sched_free(s);
}

int main(void) {
    test_chunking_and_decode_first();
    test_queue_eos_image();
    test_matches_solo(64, 1, 4096);
    test_matches_solo(16, 3, 4096); /* chunked prefill, 3 micro-batches in flight */
    test_matches_solo(32, 2, 24);   /* tight KV: preemption by recomputation */
    test_matches_solo(7, 3, 13);    /* tighter: fits the largest sequence only */
    return mm_test_finish("test_scheduler");
}
