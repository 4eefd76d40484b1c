/* bench/vision_cpu: SigLIP so400m-patch14-384 throughput on the CPU backend, printed as
 * one JSON object: images/s through the vision tower plus the MetaMorph reduction
 * (27x27 -> 8x8 bilinear + L2), in bf16 (and f32 with --f32) at 1 and 2 threads, the
 * median of several runs; FLOP/s against this backend's measured GEMM peak for the same
 * weight dtype (a 512x4304x1152 matmul, the MLP's shape). Random weights written by
 * `mm-mkmodel --preset siglip-so400m` into --workdir (default: a temp dir). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "common/runtime.h"
#include "model/siglip.h"

#ifndef MM_MKMODEL_PATH
#define MM_MKMODEL_PATH "mm-mkmodel"
#endif

#define REPEATS 3


/* Multiply-adds x2 of one image through the encoder (patch GEMM, QKVO, attention, MLP). */
static double flops_per_image(const mm_siglip_config *c) {
    double N = (double)c->grid * c->grid, D = c->hidden, I = c->intermediate;
    double K = 3.0 * c->patch_size * c->patch_size;
    double layer = 2 * N * D * D * 4 + 2 * N * D * I * 2 + 2 * N * N * D * 2;
    return 2 * N * K * D + c->n_layers * layer;
}

static double gemm_peak(mm_backend *be, mm_dtype dt) {
    const int64_t M = 512, K = 1152, N = 4304;
    mm_st_tensor st = {.name = "w", .file = "bench", .dtype = dt, .ndim = 2, .shape = {N, K}, .numel = N * K};
    void *wd = calloc((size_t)(N * K), mm_dtype_size(dt));
    float *x = calloc((size_t)(M * K), 4), *y = calloc((size_t)(M * N), 4);
    st.data = wd;
    mm_tensor w;
    double t[REPEATS] = {0};
    if (wd && x && y && be->ops->weight_load(be, &st, MM_WEIGHT_MATMUL, &w) == MM_OK) {
        be->ops->matmul(be, &w, x, y, M);
        for (int r = 0; r < REPEATS; r++) {
            double t0 = mm_now_s();
            be->ops->matmul(be, &w, x, y, M);
            t[r] = 2.0 * M * K * N / (mm_now_s() - t0) * 1e-9;
        }
        be->ops->weight_release(be, &w);
    }
    free(wd), free(x), free(y);
    return mm_bench_median(t, REPEATS);
}

/* images/s for batches of B images (median of REPEATS after one warm-up) */
static double bench_encode(mm_siglip *m, int B, float *pixels, float *tokens) {
    double t[REPEATS];
    if (mm_siglip_encode(m, pixels, B, 64, NULL, tokens) != MM_OK) {
        fprintf(stderr, "vision_cpu: %s\n", mm_error_last());
        return 0;
    }
    for (int r = 0; r < REPEATS; r++) {
        double t0 = mm_now_s();
        mm_siglip_encode(m, pixels, B, 64, NULL, tokens);
        t[r] = B / (mm_now_s() - t0);
    }
    return mm_bench_median(t, REPEATS);
}

int main(int argc, char **argv) {
    mm_runtime_init(argv); /* before any OpenMP region: see common/runtime.h */
    const char *workdir = NULL;
    int batch = 2, with_f32 = 0, layers = 0;
    static const struct option opts[] = {{"workdir", required_argument, 0, 'w'}, {"batch", required_argument, 0, 'b'},
                                         {"f32", no_argument, 0, 'f'}, {"layers", required_argument, 0, 'l'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'w') workdir = optarg;
        else if (c == 'b') batch = atoi(optarg);
        else if (c == 'f') with_f32 = 1;
        else if (c == 'l') layers = atoi(optarg);
        else {
            fprintf(stderr, "usage: vision_cpu [--workdir DIR] [--batch N] [--f32] [--layers N]\n");
            return 2;
        }
    }
    char tmp[] = "/tmp/mm_vision_bench_XXXXXX";
    if (!workdir && !(workdir = mkdtemp(tmp))) return 1;
    mkdir(workdir, 0755); /* --workdir may not exist yet */
    printf("{\"bench\": \"vision_cpu\", \"model\": \"siglip-so400m-patch14-384 (random)\", \"batch\": %d, \"results\": [",
           batch);
    const char *dts[] = {"bf16", "f32"};
    int first = 1;
    for (int d = 0; d < 1 + with_f32; d++) {
        char dir[4096], cmd[8192];
        snprintf(dir, sizeof dir, "%s/siglip-%s", workdir, dts[d]);
        snprintf(cmd, sizeof cmd, "%s --preset siglip-so400m --dtype %s --layers %d --out %s 2>/dev/null", MM_MKMODEL_PATH,
                 dts[d], layers, dir);
        if (access(dir, R_OK) != 0 && system(cmd) != 0) {
            fprintf(stderr, "vision_cpu: %s failed\n", cmd);
            return 1;
        }
        for (int threads = 1; threads <= 2; threads++) {
            mm_backend *be = NULL;
            mm_siglip *m = NULL;
            if (mm_backend_init("cpu", threads, &be) != MM_OK || mm_siglip_load(dir, be, &m) != MM_OK) {
                fprintf(stderr, "vision_cpu: %s\n", mm_error_last());
                return 1;
            }
            int64_t S = m->cfg.image_size;
            float *pix = malloc((size_t)batch * 3 * S * S * sizeof(float));
            float *tok = malloc((size_t)batch * 64 * m->cfg.hidden * sizeof(float));
            for (int64_t i = 0; i < batch * 3 * S * S; i++) pix[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
            double ips = bench_encode(m, batch, pix, tok);
            double gflops = ips * flops_per_image(&m->cfg) * 1e-9;
            double peak = gemm_peak(be, d == 0 ? MM_DTYPE_BF16 : MM_DTYPE_F32);
            printf("%s\n  {\"dtype\": \"%s\", \"threads\": %d, \"layers\": %d, \"images_per_s\": %.3f, "
                   "\"gflop_per_image\": %.1f, \"gflops\": %.1f, \"gemm_peak_gflops\": %.1f, \"fraction_of_peak\": %.3f}",
                   first ? "" : ",", dts[d], threads, m->cfg.n_layers, ips, flops_per_image(&m->cfg) * 1e-9, gflops,
                   peak, peak > 0 ? gflops / peak : 0.0);
            first = 0;
            fflush(stdout);
            free(pix), free(tok);
            mm_siglip_free(m);
            mm_backend_free(be);
        }
    }
    printf("\n]}\n");
    return 0;
}
