/* mm-stage: MPI ranks 1..P of the LLM pipeline (`mpiexec -n 1 mm-coordinator CFG :
 * -n P mm-stage CFG`). Loads only its slice of layers (rank 1 also the embedding,
 * rank P also the final norm + lm_head), says hello to the coordinator, then runs the
 * step plans it receives, in the order they arrive, until told to stop. It beats to the
 * coordinator and watches it (pipeline/liveness.h, in every wait): a coordinator silent
 * past stage_liveness_ms is gone (dead, or this host is cut off), and the stage exits on
 * its own at once -- without MPI_Finalize, which would wait for the dead -- so no rank
 * is left spinning on a partitioned host. Wiring only: the work of a step is stage.c's. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/runtime.h"
#include "common/log.h"
#include "kernels/cuda/backend_cuda.h"
#include "model/manifest.h"
#include "pipeline/liveness.h"
#include "pipeline/pipeline_mpi.h"
#include "pipeline/stage_split.h"
#include "stage.h"

#define STATS_EVERY_MS 250.0
#define STATS_IDLE_MS 10.0

static mm_liveness g_live;      /* the coordinator's, from the hello on */
static int g_coordinator_gone;  /* it fell silent: exit without anyone's help */

/* Runs in every MPI wait of this process: beats to the coordinator, notes its beats. */
static mm_status liveness_hook(void *user) {
    int silent = -1;
    mm_status s = mm_liveness_tick(&g_live, &silent);
    if (s != MM_OK && silent == 0) {
        g_coordinator_gone = 1;
        return MM_ERROR(MM_ERR_IO, "the coordinator (rank 0) has been silent for %.0f ms: it is gone or this host is cut off",
                        mm_liveness_silence_ms(&g_live, 0));
    }
    return s;
}

/* Packs any protobuf-c message and sends it to the coordinator (rank 0) under tag. */
static mm_status send_packed(const ProtobufCMessage *msg, int tag) {
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    CHECK(CHECK_ALLOC(buf));
    protobuf_c_message_pack(msg, buf);
    mm_status s = mm_mpi_send_msg(0, tag, buf, n);
    free(buf);
    mm_liveness_sent(&g_live, 0);
    return s;
}

static mm_status send_stats(const mm_stage *st, int rank) {
    Metamorph__Internal__StageStats m = METAMORPH__INTERNAL__STAGE_STATS__INIT;
    m.rank = rank, m.busy_ms = st->busy_ms, m.steps = st->steps;
    uint8_t buf[64];
    size_t n = metamorph__internal__stage_stats__pack(&m, buf);
    mm_liveness_sent(&g_live, 0);
    return mm_mpi_send_msg(0, MM_TAG_STATS, buf, n);
}

/* The activation transport for the stages' backend: NCCL between GPUs (one per rank,
 * picked by the local rank; cfg->backend becomes "cuda:N"), MPI for CPU stages. */
static mm_status transport_open(mm_serve_config *cfg, int rank, int size, mm_transport **tr) {
    if (strncmp(cfg->backend, "cuda", 4) != 0) return mm_transport_mpi_init(tr);
#ifdef MM_HAVE_NCCL
    int n = mm_cuda_device_count();
    if (n == 0) return MM_ERROR(MM_ERR_UNSUPPORTED, "stage rank %d: backend cuda but no GPU", rank);
    int dev = mm_local_rank(rank) % n;
    snprintf(cfg->backend, sizeof cfg->backend, "cuda:%d", dev);
    return mm_transport_nccl_init(rank, size, dev, tr);
#else
    return MM_ERROR(MM_ERR_UNSUPPORTED, "backend cuda: this mm-stage was built without CUDA + NCCL");
#endif
}

/* Loads this rank's slice; backend (NULL: the config's) overrides the config.
 * *liveness_ms: the config's stage_liveness_ms (the default when it cannot be read). */
static mm_status stage_load(const char *cfg_path, const char *backend, int rank, int size, mm_transport **tr,
                            mm_stage **st, int32_t *a, int32_t *b, int *liveness_ms) {
    mm_serve_config cfg;
    mm_serve_config_defaults(&cfg);
    *liveness_ms = cfg.stage_liveness_ms;
    CHECK(mm_serve_config_load(cfg_path, &cfg));
    *liveness_ms = cfg.stage_liveness_ms;
    if (backend) snprintf(cfg.backend, sizeof cfg.backend, "%s", backend);
    CHECK(transport_open(&cfg, rank, size, tr));
    mm_model_paths paths;
    CHECK(mm_model_paths_resolve(cfg.model, &paths));
    mm_llama_config lc;
    CHECK(mm_llama_config_load(paths.llm, &lc));
    int32_t P = size - 1, begin[MM_MAX_STAGES], end[MM_MAX_STAGES];
    CHECK(mm_split_stages(&cfg, &lc, P, begin, end));
    *a = begin[rank - 1], *b = end[rank - 1];
    CHECK(mm_stage_init(&cfg, *a, *b, rank == 1, rank == P, rank > 1 ? rank - 1 : -1, rank < P ? rank + 1 : -1, *tr, st));
#ifdef MM_HAVE_NCCL
    mm_transport_nccl_bind_stream(*tr, mm_backend_cuda_stream((*st)->be));
#endif
    return MM_OK;
}

/* Runs plans until SHUTDOWN. A failed step is reported to rank 0 and ends the loop:
 * the pipeline is out of step after it, so the coordinator takes it down. */
static mm_status serve(mm_stage *st, int rank) {
    double last_stats = mm_now_ms();
    for (;;) {
        uint8_t *buf;
        size_t len;
        MPI_Status ms;
        CHECK(mm_mpi_recv_msg(0, MPI_ANY_TAG, &buf, &len, &ms));
        mm_liveness_heard(&g_live, 0);
        if (ms.MPI_TAG == MM_TAG_BEAT) {
            free(buf);
            continue;
        }
        if (ms.MPI_TAG == MM_TAG_SHUTDOWN) {
            free(buf);
            return MM_OK;
        }
        if (ms.MPI_TAG != MM_TAG_PLAN) {
            free(buf);
            return MM_ERROR(MM_ERR_INTERNAL, "rank %d: unexpected tag %d from the coordinator", rank, ms.MPI_TAG);
        }
        Metamorph__Internal__StepPlan *plan = metamorph__internal__step_plan__unpack(NULL, len, buf);
        free(buf);
        if (!plan) return MM_ERROR(MM_ERR_FORMAT, "rank %d: undecodable step plan (%zu bytes)", rank, len);
        Metamorph__Internal__StepResult res = METAMORPH__INTERNAL__STEP_RESULT__INIT;
        mm_status s = mm_stage_run(st, plan, &res);
        if (s != MM_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "stage rank %d: %s", rank, mm_error_last());
            LOG_ERROR("%s", msg);
            mm_stage_result_free(&res);
            Metamorph__Internal__StepResult err = METAMORPH__INTERNAL__STEP_RESULT__INIT;
            err.step_id = plan->step_id;
            err.error = msg;
            metamorph__internal__step_plan__free_unpacked(plan, NULL);
            CHECK(send_packed(&err.base, MM_TAG_RESULT));
            return s;
        }
        if (st->last) s = send_packed(&res.base, MM_TAG_RESULT);
        mm_stage_result_free(&res);
        metamorph__internal__step_plan__free_unpacked(plan, NULL);
        CHECK(s);
        /* every STATS_EVERY_MS while busy, and when no plan waits (going idle) at most
         * every STATS_IDLE_MS: the busy time read after a burst is then at most
         * STATS_IDLE_MS short, without a message after every step of a lone request */
        int plan_waiting = 0;
        if (MPI_Iprobe(0, MPI_ANY_TAG, MPI_COMM_WORLD, &plan_waiting, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return MM_ERROR(MM_ERR_IO, "rank %d: MPI_Iprobe failed", rank);
        double since = mm_now_ms() - last_stats;
        if (since >= STATS_EVERY_MS || (!plan_waiting && since >= STATS_IDLE_MS)) {
            CHECK(send_stats(st, rank));
            last_stats = mm_now_ms();
        }
    }
}

int main(int argc, char **argv) {
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    mm_runtime_die_with_parent(SIGKILL); /* an orphaned rank would hold its GPU forever */
    int rank = -1, size = 0;
    mm_status s = mm_mpi_init(&argc, &argv, &rank, &size);
    if (s != MM_OK) {
        fprintf(stderr, "mm-stage: %s\n", mm_error_last());
        return 1;
    }
    /* mpiexec forwards SIGINT/SIGTERM to every rank: the coordinator answers them and
     * stops the stages in order (SHUTDOWN); if it dies instead, hydra kills the job.
     * SIGUSR1 is hydra's "a process died" notice (-disable-auto-cleanup): the
     * coordinator acts on it; a stage dying of it would only race hydra's cleanup. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    const char *backend = NULL; /* --backend cuda|cpu overrides the config's */
    if (argc == 4 && !strcmp(argv[1], "--backend")) backend = argv[2], argv[1] = argv[3], argc = 2;
    if (argc != 2 || rank < 1) {
        fprintf(stderr, "usage: mpiexec -n 1 mm-coordinator CFG : -n P mm-stage [--backend cuda|cpu] CFG (rank %d)\n",
                rank);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    mm_transport *tr = NULL;
    mm_stage *st = NULL;
    int32_t a = 0, b = 0;
    int liveness_ms = 0;
    s = stage_load(argv[1], backend, rank, size, &tr, &st, &a, &b, &liveness_ms);
    Metamorph__Internal__StageHello h = METAMORPH__INTERNAL__STAGE_HELLO__INIT;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    char err[1024] = "";
    h.rank = rank, h.host = host, h.pid = (int32_t)getpid(), h.block_begin = a, h.block_end = b;
    h.layer_begin = a / MM_LLAMA_BLOCKS_PER_LAYER;
    h.layer_end = (b + MM_LLAMA_BLOCKS_PER_LAYER - 1) / MM_LLAMA_BLOCKS_PER_LAYER;
    if (s != MM_OK) snprintf(err, sizeof err, "stage rank %d: %s", rank, mm_error_last());
    h.error = err;
    if (st) h.visual_dim = st->visual_dim, h.projector = st->first && st->visual_dim > 0,
            h.vision_head = st->last && st->visual_dim > 0;
    mm_liveness_init(&g_live, size, liveness_ms);
    mm_liveness_heard(&g_live, 0); /* watched from the hello on: the coordinator beats back */
    mm_mpi_set_wait_hook(liveness_hook, NULL);
    mm_status hs = send_packed(&h.base, MM_TAG_HELLO);
    if (s == MM_OK && hs == MM_OK) {
        LOG_INFO("stage rank %d: layers [%d, %d)%s%s", rank, a, b, st->first ? " + embed" : "", st->last ? " + head" : "");
        s = serve(st, rank);
    }
    int rc = s == MM_OK && hs == MM_OK ? 0 : 1;
    int stopped = rc == 0; /* told to stop (SHUTDOWN) */
    if (rc) {
        /* The coordinator has the error (hello or step result) and either stops the
         * stages or aborts the job. Finalizing on our own could involve a dead peer
         * (MPI_Finalize synchronises through the process manager), so wait. */
        fprintf(stderr, "mm-stage rank %d: %s\n", rank, mm_error_last());
        uint8_t *buf;
        size_t len;
        MPI_Status ms;
        if (hs == MM_OK && !g_coordinator_gone && mm_mpi_recv_msg(0, MM_TAG_SHUTDOWN, &buf, &len, &ms) == MM_OK) {
            free(buf);
            stopped = 1;
        }
    }
    mm_mpi_set_wait_hook(NULL, NULL);
    mm_stage_free(st);
    mm_transport_free(tr);
    if (g_coordinator_gone) {
        /* no MPI_Finalize (it would wait for the coordinator), and no exit handlers
         * either (MPI's and UCX's would talk to the dead): gone at once */
        fprintf(stderr, "mm-stage rank %d: exiting on its own\n", rank);
        fflush(NULL);
        _exit(1);
    }
    if (stopped) { /* SHUTDOWN: our last beat leaves, then BYE (see mm_liveness_settle) */
        mm_liveness_settle(&g_live, liveness_ms);
        char nothing = 0;
        if (mm_mpi_send_msg(0, MM_TAG_BYE, &nothing, 1) != MM_OK) fprintf(stderr, "mm-stage rank %d: %s\n", rank, mm_error_last());
    }
    mm_mpi_finalize(liveness_ms);
    return rc;
}
