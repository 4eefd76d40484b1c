/* See serve_spawn.h. */
#include "serve_spawn.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/free_port.h"
#include "common/http_client.h"
#include "bench/serve_load.h"

static const char *const POOL[2] = {"encode", "decode"};
static const char *const WORKER_BIN[2] = {"mm-encoder", "mm-decoder"};

/* In a forked child: dies with bench/serve, writes to log, runs argv. Never returns. */
static void exec_child(const char *log, char *const argv[]) {
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || !freopen("/dev/null", "r", stdin) || !freopen(log, "w", stdout) ||
        dup2(fileno(stdout), STDERR_FILENO) < 0)
        _exit(127);
    execv(argv[0], argv);
    fprintf(stderr, "serve: cannot run %s\n", argv[0]);
    _exit(127);
}

/* SIGTERM to pid; reaped within 15 s, else SIGKILL (to its process group when group). */
static void stop_child(pid_t pid, int group) {
    if (pid <= 0) return;
    if (kill(pid, SIGTERM) != 0) perror("serve: kill");
    for (double t0 = serve_now(); serve_now() - t0 < 15; usleep(20000))
        if (waitpid(pid, NULL, WNOHANG) == pid) return;
    fprintf(stderr, "serve: pid %d did not stop in 15 s: SIGKILL\n", (int)pid);
    kill(group ? -pid : pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static int write_config(serve_service *s, const char *path, int stages, int threads, const char *extra_json) {
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return -1;
    }
    fprintf(f,
            "{\"model\": \"%s\", \"listen\": \"%s\", \"stages\": %d, \"threads\": %d, \"encoders\": 0, \"decoders\": 0,\n"
            " \"encode_bind\": \"%s\", \"decode_bind\": \"%s\", \"metrics_listen\": \"%s\", \"http_listen\": \"\"%s%s}\n",
            s->model, s->target, stages, threads, s->endpoint[SPAWN_ENCODE], s->endpoint[SPAWN_DECODE], s->metrics,
            extra_json[0] ? ", " : "", extra_json);
    if (fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return 0;
}

/* Waits up to timeout_s for GetModelInfo to say serving; 0, or -1 when the launcher died or time ran out. */
static int wait_serving(serve_service *s, double timeout_s) {
    for (double t0 = serve_now(); serve_now() - t0 < timeout_s; usleep(100000)) {
        if (waitpid(s->launcher, NULL, WNOHANG) == s->launcher) {
            s->launcher = 0;
            fprintf(stderr, "serve: the service exited during start (see %s/service.log)\n", s->dir);
            return -1;
        }
        Metamorph__V1__ModelInfo *m = serve_model_info(s->cl);
        int serving = m && m->serving;
        if (m) metamorph__v1__model_info__free_unpacked(m, NULL);
        if (serving) return 0;
    }
    fprintf(stderr, "serve: the service is not serving after %.0f s (see %s/service.log)\n", timeout_s, s->dir);
    return -1;
}

int serve_spawn_start(serve_service *s, const char *model, int stages, int threads, int worker_threads,
                      const char *extra_json) {
    memset(s, 0, sizeof *s);
    s->worker_threads = worker_threads;
    if (!realpath(model, s->model)) {
        perror(model);
        return -1;
    }
    snprintf(s->dir, sizeof s->dir, "/tmp/mm-bench-serve-XXXXXX");
    if (!mkdtemp(s->dir)) {
        perror("serve: mkdtemp");
        return -1;
    }
    int port[4];
    for (int i = 0; i < 4; i++)
        if ((port[i] = mm_free_port()) < 0) {
            perror("serve: no free port");
            goto fail;
        }
    snprintf(s->target, sizeof s->target, "127.0.0.1:%d", port[0]);
    snprintf(s->metrics, sizeof s->metrics, "127.0.0.1:%d", port[1]);
    for (int p = 0; p < 2; p++) snprintf(s->endpoint[p], sizeof s->endpoint[p], "tcp://127.0.0.1:%d", port[2 + p]);
    char cfg[300], log[300], launch[] = MM_SOURCE_DIR "/deploy/launch.sh";
    snprintf(cfg, sizeof cfg, "%s/service.json", s->dir);
    snprintf(log, sizeof log, "%s/service.log", s->dir);
    if (write_config(s, cfg, stages, threads, extra_json) != 0) goto fail;
    if (mm_client_open(s->target, &s->cl) != MM_OK) {
        fprintf(stderr, "serve: cannot open a channel to %s: %s\n", s->target, mm_error_last());
        goto fail;
    }
    s->launcher = fork();
    if (s->launcher == 0) {
        setpgid(0, 0);
        char *argv[] = {launch, cfg, (char *)"--once", NULL};
        if (setenv("MM_BIN_DIR", MM_BINARY_DIR, 1) != 0) _exit(127);
        exec_child(log, argv);
    }
    if (s->launcher < 0) {
        perror("serve: fork");
        s->launcher = 0;
        goto fail;
    }
    setpgid(s->launcher, s->launcher);
    if (wait_serving(s, 120) == 0) return 0;
fail:
    serve_spawn_stop(s, 1);
    return -1;
}

static int start_worker(serve_service *s, int pool) {
    int k = s->n_workers[pool];
    if (k == SPAWN_MAX_WORKERS) {
        fprintf(stderr, "serve: at most %d workers per pool\n", SPAWN_MAX_WORKERS);
        return -1;
    }
    char bin[PATH_MAX], threads[16], name[64], log[400];
    snprintf(bin, sizeof bin, "%s/worker/%s", MM_BINARY_DIR, WORKER_BIN[pool]);
    snprintf(threads, sizeof threads, "%d", s->worker_threads);
    snprintf(name, sizeof name, "bench-%s-%d", POOL[pool], k);
    snprintf(log, sizeof log, "%s/%s.log", s->dir, name);
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[] = {bin,      (char *)"--model", s->model, (char *)"--connect", s->endpoint[pool], (char *)"--threads",
                        threads, (char *)"--name", name, NULL};
        exec_child(log, argv);
    }
    if (pid < 0) {
        perror("serve: fork");
        return -1;
    }
    s->workers[pool][s->n_workers[pool]++] = pid;
    return 0;
}

int serve_spawn_workers(serve_service *s, int n, double timeout_s) {
    for (int p = 0; p < 2; p++)
        while (s->n_workers[p] < n)
            if (start_worker(s, p) != 0) return -1;
    for (double t0 = serve_now(); serve_now() - t0 < timeout_s; usleep(50000)) {
        for (int p = 0; p < 2; p++)
            for (int k = 0; k < s->n_workers[p]; k++)
                if (waitpid(s->workers[p][k], NULL, WNOHANG) == s->workers[p][k]) {
                    s->workers[p][k] = 0;
                    fprintf(stderr, "serve: worker bench-%s-%d exited (see %s/bench-%s-%d.log)\n", POOL[p], k, s->dir,
                            POOL[p], k);
                    return -1;
                }
        mm_http_reply r;
        if (mm_http_request(s->metrics, "GET", "/metrics", 10, &r) != MM_OK || r.status != 200) {
            fprintf(stderr, "serve: GET /metrics: %s\n", r.raw ? "not 200" : mm_error_last());
            mm_http_reply_free(&r);
            return -1;
        }
        double enc = mm_prometheus_sample(r.body, "metamorph_pool_workers{pool=\"encode\"}");
        double dec = mm_prometheus_sample(r.body, "metamorph_pool_workers{pool=\"decode\"}");
        mm_http_reply_free(&r);
        if (enc >= n && dec >= n) return 0;
    }
    fprintf(stderr, "serve: the pools do not count %d workers each after %.0f s (logs in %s)\n", n, timeout_s, s->dir);
    return -1;
}

/* Removes s->dir and the files this module put there. */
static void remove_dir(const serve_service *s) {
    char path[400];
    static const char *const FILES[] = {"service.json", "service.log"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", s->dir, FILES[i]);
        if (unlink(path) != 0) perror(path);
    }
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < s->n_workers[p]; k++) {
            snprintf(path, sizeof path, "%s/bench-%s-%d.log", s->dir, POOL[p], k);
            if (unlink(path) != 0) perror(path);
        }
    if (rmdir(s->dir) != 0) perror(s->dir);
}

void serve_spawn_stop(serve_service *s, int keep_logs) {
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < s->n_workers[p]; k++) {
            stop_child(s->workers[p][k], 0);
            s->workers[p][k] = 0;
        }
    stop_child(s->launcher, 1);
    s->launcher = 0;
    mm_client_close(s->cl);
    s->cl = NULL;
    if (!s->dir[0]) return;
    if (keep_logs) fprintf(stderr, "serve: the service's logs are in %s\n", s->dir);
    else remove_dir(s);
}
