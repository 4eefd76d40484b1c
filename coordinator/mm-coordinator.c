/* mm-coordinator: MPI rank 0 of `mpiexec -n 1 mm-coordinator CFG : -n P mm-stage CFG`.
 * Wiring only: loads the config and the tokenizer, binds the encoder and decoder pools
 * (mm-encoder / mm-decoder workers join them over ZeroMQ, from any host, at any time),
 * waits for the stages, starts the gRPC threads, and runs the scheduler loop on the main
 * thread (the MPI thread).
 * SIGINT/SIGTERM stop it cleanly; a stage silent past stage_liveness_ms (our own
 * heartbeats, pipeline/liveness.h) or SIGUSR1 (hydra: a process of the job died) takes
 * the pipeline down: requests fail with UNAVAILABLE, health says NOT_SERVING, and
 * after fail_exit_ms the whole job is aborted so that a supervisor restarts it.
 * With MM_RUN_DIR set (deploy/launch.sh), it writes coordinator.pid there at start and
 * ready (the stages' rank host pid, one per line) once serving, for the launcher's
 * watchdog. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <zmq.h>

#include "common/runtime.h"
#include "common/log.h"
#include "coord_cli.h"
#include "decoder_pool.h"
#include "engine.h"
#include "grpc_server.h"
#include "http_server.h"
#include "metrics_http.h"
#include "model/decoder.h"
#include "model/manifest.h"
#include "model/metamorph.h"
#include "api_keys.h"
#include "common/curve_keys.h"
#include "pool_zap.h"
#include "run_dir.h"
#include "tls_files.h"
#include "pipeline/stage_split.h"
#include "pipeline/pipeline_mpi.h"

static volatile sig_atomic_t g_stop, g_stage_failed;

static void on_stop(int sig) { g_stop = 1; }
static void on_stage_failed(int sig) { g_stage_failed = 1; }

static void install(int sig, void (*fn)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL); /* no SA_RESTART: waits return early */
}

typedef struct {
    mm_serve_config cfg;
    mm_model_paths paths;
    mm_llama_config llm;
    mm_tokenizer *tok;
    mm_metamorph_config mm;     /* n_image_tokens = 0: not a MetaMorph model */
    void *zctx;
    mm_encoder_pool *encoder;   /* NULL: no vision input */
    mm_decoder_pool *decoder;   /* NULL: generated images as tokens only */
    int32_t image_side;         /* pixels of the decoder's images; 0: no decoder */
    char model_name[256];       /* the model's id in the HTTP API */
    mm_tls_files tls;           /* both API doors; no cert: plain text */
    mm_api_keys *keys;          /* NULL: no key needed */
    mm_metrics_http_auth metrics_auth; /* keys + what the operator opened (auth_open) */
    char curve_secret[MM_Z85_KEY_LEN + 1]; /* the pools' CURVE secret key, "" = plain */
    mm_pool_zap *zap;           /* admits authorized workers; NULL without CURVE */
} coord_setup;

/* SIGHUP re-reads api_keys_file: this thread waits for it (SIGHUP is blocked in every
 * thread from the start of main, so no other thread takes it and it never kills us). */
static void *sighup_main(void *arg) {
    mm_api_keys *keys = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    for (int sig; sigwait(&set, &sig) == 0;) {
        if (mm_api_keys_reload(keys) == MM_OK) LOG_INFO("SIGHUP: %zu API keys in force", mm_api_keys_count(keys));
        else LOG_ERROR("SIGHUP: the keys in force stay: %s", mm_error_last());
    }
    return NULL;
}

/* Is the host of "host:port" a loopback one? (Who else can reach a port bound there.) */
static int loopback(const char *address) {
    const char *host = strstr(address, "://");
    host = host ? host + 3 : address;
    return !strncmp(host, "127.", 4) || !strncmp(host, "localhost:", 10) || !strncmp(host, "[::1]:", 6);
}

/* TLS and API keys from the config; loud warnings where strangers could get in. */
static mm_status setup_security(coord_setup *c) {
    const mm_serve_config *cfg = &c->cfg;
    CHECK(mm_tls_files_load(cfg->tls_cert, cfg->tls_key, cfg->tls_client_ca, &c->tls));
    if (cfg->api_keys_file[0]) {
        CHECK(mm_api_keys_load(cfg->api_keys_file, &c->keys));
        mm_api_keys_set_limits(c->keys, cfg->key_max_requests, cfg->key_max_tokens);
        pthread_t t;
        if (pthread_create(&t, NULL, sighup_main, c->keys) != 0)
            return MM_ERROR(MM_ERR_INTERNAL, "cannot start the SIGHUP thread");
        pthread_detach(t);
        c->metrics_auth = (mm_metrics_http_auth){c->keys, strstr(cfg->auth_open, "health") != NULL,
                                                 strstr(cfg->auth_open, "metrics") != NULL};
        LOG_INFO("API keys: %zu from %s (SIGHUP re-reads it)%s%s", mm_api_keys_count(c->keys), cfg->api_keys_file,
                 cfg->auth_open[0] ? "; open without a key: " : "", cfg->auth_open);
    }
    const char *doors[] = {cfg->listen, cfg->http_listen};
    for (int i = 0; i < 2; i++)
        if (doors[i][0] && !loopback(doors[i]) && (!c->tls.cert_pem || !c->keys))
            LOG_WARN("%s is reachable from other hosts %s%s%s: set tls_cert/tls_key and api_keys_file (README, Security)",
                     doors[i], !c->tls.cert_pem ? "in plain text" : "", !c->tls.cert_pem && !c->keys ? " and " : "",
                     !c->keys ? "without API keys" : "");
    const char *pools[] = {cfg->encode_bind, cfg->decode_bind};
    for (int i = 0; i < 2; i++)
        if (pools[i][0] && !loopback(pools[i]) && !cfg->pool_curve_secret_key[0])
            LOG_WARN("pool %s is reachable from other hosts in plain text and unauthenticated: any process that "
                     "connects can take jobs (users' images and tokens) and answer them; keep it on a trusted network",
                     pools[i]);
    return MM_OK;
}

/* served_model_name, or the model directory's last path component. */
static void model_name(const mm_serve_config *cfg, char *out, size_t cap) {
    if (cfg->served_model_name[0]) {
        snprintf(out, cap, "%s", cfg->served_model_name);
        return;
    }
    size_t n = strlen(cfg->model);
    while (n > 1 && cfg->model[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && cfg->model[b - 1] != '/') b--;
    snprintf(out, cap, "%.*s", (int)(n - b), cfg->model + b);
}

static mm_pool_settings pool_settings(const coord_setup *c, const char *endpoint) {
    return (mm_pool_settings){c->zctx,
                              endpoint,
                              c->cfg.pool_heartbeat_ms,
                              c->cfg.pool_liveness,
                              c->cfg.pool_job_timeout_ms,
                              c->cfg.pool_max_message_mb,
                              c->curve_secret[0] ? c->curve_secret : NULL};
}

/* CURVE on the pools: the coordinator's key pair and the ZAP handler that admits only
 * the authorized workers (before any pool binds: without it CURVE admits every key). */
static mm_status setup_pool_curve(coord_setup *c) {
    const mm_serve_config *cfg = &c->cfg;
    if (!cfg->pool_curve_secret_key[0] != !cfg->pool_authorized_keys[0])
        return MM_ERROR(MM_ERR_INVALID, "pool_curve_secret_key and pool_authorized_keys go together");
    if (!cfg->pool_curve_secret_key[0]) return MM_OK;
    char pub[MM_Z85_KEY_LEN + 1];
    CHECK(mm_curve_key_read(cfg->pool_curve_secret_key, pub, c->curve_secret));
    return mm_pool_zap_start(c->zctx, cfg->pool_authorized_keys, &c->zap);
}

static mm_status setup(const char *cfg_path, coord_setup *c) {
    CHECK(mm_serve_config_load(cfg_path, &c->cfg));
    model_name(&c->cfg, c->model_name, sizeof c->model_name);
    CHECK(mm_model_paths_resolve(c->cfg.model, &c->paths));
    CHECK(mm_llama_config_load(c->paths.llm, &c->llm));
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", c->paths.llm);
    CHECK(mm_tokenizer_load(tok_path, &c->tok));
    CHECK(setup_security(c));
    if (!mm_metamorph_is_checkpoint(c->paths.llm)) return MM_OK;
    CHECK(mm_metamorph_config_load(c->paths.llm, c->tok, &c->mm));
    c->zctx = zmq_ctx_new();
    if (!c->zctx) return MM_ERROR(MM_ERR_IO, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    CHECK(setup_pool_curve(c));
    if (c->paths.vision[0] && c->cfg.encode_bind[0]) {
        mm_encoder_pool_params ep = {pool_settings(c, c->cfg.encode_bind), c->mm.n_image_tokens, c->mm.mm_hidden,
                                     c->cfg.embed_cache_mb};
        CHECK(mm_encoder_pool_init(&ep, &c->encoder));
    }
    if (c->paths.decoder[0] && c->cfg.decode_bind[0]) {
        mm_pool_settings dp = pool_settings(c, c->cfg.decode_bind);
        CHECK(mm_decoder_pool_init(&dp, c->mm.n_image_tokens, c->mm.mm_hidden, &c->decoder));
        CHECK(mm_decoder_default_side(c->paths.decoder, &c->image_side));
    }
    return MM_OK;
}

/* The start-up banner, at the default log level: what is served, where, by whom. */
static void banner(const coord_setup *c, const mm_mpi_driver *drv, int vision_in, int images_out, int http_on,
                   int metrics_on) {
    const mm_llama_config *l = &c->llm;
    LOG_INFO("serving \"%s\" (%s): %d layers, dim %d, vocab %d, context %d; image input %s, image output %s",
             c->model_name, c->cfg.model, l->n_layers, l->dim, l->vocab_size, mm_engine_max_context(&c->cfg, l),
             vision_in ? "on" : "off", images_out ? (c->decoder ? "on (PNG)" : "on (visual tokens only)") : "off");
    for (int k = 0; k < mm_mpi_driver_n_stages(drv); k++) {
        const mm_stage_info *st = mm_mpi_driver_stage(drv, k);
        char part[128];
        mm_split_describe(st->block_begin, st->block_end, part, sizeof part);
        LOG_INFO("stage %d of %d: rank %d on %s (pid %d), %s%s%s", k + 1, mm_mpi_driver_n_stages(drv), st->rank, st->host,
                 st->pid, part, k == 0 ? " + embed" : "",
                 k + 1 == mm_mpi_driver_n_stages(drv) ? " + norm, lm_head" : "");
    }
    LOG_INFO("gRPC on %s; OpenAI HTTP %s%s%s; metrics %s%s%s", c->cfg.listen, http_on ? "on http://" : "off",
             http_on ? c->cfg.http_listen : "", http_on ? "/v1" : "", metrics_on ? "on http://" : "off",
             metrics_on ? c->cfg.metrics_listen : "", metrics_on ? "/metrics" : "");
    LOG_INFO("pools: encode %s, decode %s (workers join and leave at any time); ready",
             c->encoder ? c->cfg.encode_bind : "none", c->decoder ? c->cfg.decode_bind : "none");
}

/* The threads that are not the MPI thread must not take the signals. */
static void block_signals(int block) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

static int serve(coord_setup *c, mm_mpi_driver *drv) {
    static atomic_int serving;
    void *zctx = c->zctx ? c->zctx : (c->zctx = zmq_ctx_new());
    mm_engine *eng = NULL;
    mm_grpc_server *srv = NULL;
    mm_http_server *api = NULL;
    mm_metrics *metrics = NULL;
    mm_metrics_http *http = NULL;
    mm_trace *trace = NULL;
    int rc = 1;
    int32_t image_start = mm_tokenizer_token_id(c->tok, "<image_start>");
    /* images in need the encoder and stage 1's projector, of the same width */
    int vision_input = c->encoder && mm_mpi_driver_has_projector(drv) && mm_mpi_driver_visual_dim(drv) == c->mm.mm_hidden;
    if (c->encoder && !vision_input) LOG_ERROR("image inputs off: the first stage has no mm_projector of width %d", c->mm.mm_hidden);
    int image_output = mm_mpi_driver_has_vision_head(drv) && image_start >= 0;
    mm_engine_params ep = {&c->cfg, c->tok, &c->llm, drv, zctx, &serving, &g_stop, &g_stage_failed, image_start,
                           c->mm.n_image_tokens, vision_input ? c->encoder : NULL, image_output ? c->decoder : NULL,
                           NULL, NULL};
    if (mm_metrics_create(mm_mpi_driver_n_stages(drv), &metrics) != MM_OK ||
        mm_metrics_http_start(c->cfg.metrics_listen, metrics, &serving, &c->metrics_auth, &http) != MM_OK) {
        LOG_ERROR("metrics: %s", mm_error_last());
        mm_mpi_driver_shutdown(drv);
        goto out;
    }
    ep.metrics = metrics;
    if (mm_trace_open(c->cfg.trace_file, &trace) != MM_OK) {
        LOG_ERROR("%s", mm_error_last());
        mm_mpi_driver_shutdown(drv);
        goto out;
    }
    ep.trace = trace;
    if (!zctx || mm_engine_init(&ep, &eng) != MM_OK) {
        LOG_ERROR("scheduler: %s", zctx ? mm_error_last() : "zmq_ctx_new failed");
        mm_mpi_driver_shutdown(drv);
        goto out;
    }
    mm_grpc_params gp = {
        .listen = c->cfg.listen, .max_receive_bytes = c->cfg.max_receive_mb * (1 << 20), .zmq_ctx = zctx,
        .limits = {.tok = c->tok, .max_context = mm_engine_max_context(&c->cfg, &c->llm), .vocab_size = c->llm.vocab_size,
                   .max_new_tokens = c->cfg.max_new_tokens, .max_images = c->cfg.max_images,
                   .max_stop_strings = c->cfg.max_stop_strings, .image_steps = c->cfg.image_steps,
                   .image_start_id = image_start,
                   .n_image_tokens = c->mm.n_image_tokens, .vision_input = vision_input, .image_generation = image_output,
                   .bos_id = c->llm.bos_id},
        .serving = &serving, .metrics = metrics, .tls = &c->tls, .keys = c->keys,
        .health_open = c->metrics_auth.health_open, .guard = c->cfg.http2_guard,
        .max_connections = c->cfg.http2_max_connections, .max_per_peer = c->cfg.http2_max_connections_per_peer,
        .handshake_ms = c->cfg.http2_handshake_timeout_ms};
    block_signals(1);
    mm_status s = mm_grpc_start(&gp, &srv);
    block_signals(0);
    if (s != MM_OK) {
        LOG_ERROR("gRPC: %s", mm_error_last());
        mm_mpi_driver_shutdown(drv);
        goto out;
    }
    if (c->cfg.http_listen[0]) {
        mm_http_params hp = {.listen = c->cfg.http_listen, .max_body_bytes = (size_t)c->cfg.http_max_body_mb << 20,
                             .max_connections = (unsigned)c->cfg.http_max_connections, .zmq_ctx = zctx,
                             .limits = gp.limits, .model_name = c->model_name,
                             .image_side = image_output && c->decoder ? c->image_side : 0, .serving = &serving,
                             .metrics = metrics, .tls = &c->tls, .keys = c->keys,
                             .health_open = c->metrics_auth.health_open};
        block_signals(1);
        s = mm_http_start(&hp, &api);
        block_signals(0);
        if (s != MM_OK) {
            LOG_ERROR("%s", mm_error_last());
            mm_engine_stop_replies(eng, 0);
            mm_grpc_stop(srv);
            mm_mpi_driver_shutdown(drv);
            goto out;
        }
    }
    atomic_store(&serving, 1);
    mm_run_dir_write_ready(drv);
    banner(c, drv, vision_input, image_output, api != NULL, http != NULL);
    rc = mm_engine_run(eng);
    mm_engine_stop_replies(eng, api != NULL);
    mm_grpc_stop(srv);
    mm_http_stop(api);
out:
    mm_engine_free(eng);
    mm_trace_close(trace);
    mm_metrics_http_stop(http);
    mm_metrics_free(metrics);
    return rc;
}

/* Each gRPC connection holds three descriptors (h2_guard.h) and the default soft limit is
 * often 1024: the soft limit goes up to the hard one, so http2_max_connections binds first. */
static void raise_open_files(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &r) != 0) LOG_WARN("open files limit stays: %s", strerror(errno));
    }
}

int main(int argc, char **argv) {
    int cli = mm_coord_cli(argc, argv); /* --help, --print-config, --check: no MPI */
    if (cli >= 0) return cli;
    sigset_t hup; /* blocked in every thread to come: sighup_main takes it */
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &hup, NULL);
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    mm_runtime_die_with_parent(SIGKILL); /* an orphaned rank would serve unsupervised */
    mm_run_dir_write_pid();
    int rank = -1, size = 0;
    if (mm_mpi_init(&argc, &argv, &rank, &size) != MM_OK) {
        fprintf(stderr, "mm-coordinator: %s\n", mm_error_last());
        return 1;
    }
    install(SIGINT, on_stop);
    install(SIGTERM, on_stop);
    install(SIGUSR1, on_stage_failed);
    signal(SIGPIPE, SIG_IGN);
    raise_open_files();
    if (argc != 2 || rank != 0) {
        fprintf(stderr, "usage: mpiexec -n 1 mm-coordinator CFG : -n P mm-stage CFG\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    coord_setup c;
    memset(&c, 0, sizeof c);
    mm_mpi_driver *drv = NULL;
    int rc = 1;
    if (setup(argv[1], &c) != MM_OK || mm_mpi_driver_init(size - 1, c.cfg.stage_liveness_ms, &drv) != MM_OK) {
        fprintf(stderr, "mm-coordinator: %s\n", mm_error_last());
    } else if (mm_mpi_driver_hello(drv, &g_stop) != MM_OK) {
        fprintf(stderr, "mm-coordinator: stages: %s\n", mm_error_last());
    } else {
        rc = serve(&c, drv);
    }
    mm_mpi_driver_free(drv);
    mm_encoder_pool_free(c.encoder);
    mm_decoder_pool_free(c.decoder);
    if (c.zctx) zmq_ctx_term(c.zctx); /* ends the ZAP thread */
    mm_pool_zap_free(c.zap);
    memset(c.curve_secret, 0, sizeof c.curve_secret);
    mm_tokenizer_free(c.tok);
    mm_tls_files_free(&c.tls); /* c.keys stays: the SIGHUP thread holds it until exit */
    if (rc != 0) {
        fprintf(stderr, "mm-coordinator: aborting the MPI job\n");
        MPI_Abort(MPI_COMM_WORLD, rc); /* takes the stages down too; the supervisor restarts the job */
    }
    mm_mpi_finalize(c.cfg.stage_liveness_ms);
    return 0;
}
