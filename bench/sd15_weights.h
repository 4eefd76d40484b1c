/* Random-weight Stable Diffusion 1.5 UNet and VAE decoder checkpoints (the diffusers
 * module tree and config, f16) for the decoder benchmarks on any backend, and the
 * matching diffusers timing through bench/decoder_torch.py. */
#ifndef MM_BENCH_SD15_H
#define MM_BENCH_SD15_H

/* The decoder benchmarks' options: --workdir DIR (NULL when absent), --runs N (*runs
 * keeps its default when absent), --no-torch. 0, or 2 after printing a usage line. */
typedef struct {
    const char *workdir;
    int runs, with_torch;
} mm_bench_decoder_args;
int mm_bench_decoder_args_parse(int argc, char **argv, const char *prog, mm_bench_decoder_args *a);

/* Writes dir/unet and dir/vae unless both are there already; 0 or -1 (mm_error_last). */
int mm_bench_sd15_write(const char *dir);
/* Seconds of one diffusers UNet call at the benchmark's shapes (64x64 latents, batch 2,
 * 77 x 768 context): python3 (or $MM_BENCH_PYTHON) bench/decoder_torch.py ARGS; < 0
 * when torch or diffusers are missing there. */
double mm_bench_diffusers_step(const char *args);

#endif
