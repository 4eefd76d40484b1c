/* Random-weight Stable Diffusion 1.5 UNet and VAE decoder checkpoints (the diffusers
 * module tree and config, f16) for the decoder benchmarks on any backend, and the
 * matching diffusers timing through bench/decoder_torch.py. */
#ifndef MM_BENCH_SD15_H
#define MM_BENCH_SD15_H

/* Writes dir/unet and dir/vae unless both are there already; 0 or -1 (mm_error_last). */
int mm_bench_sd15_write(const char *dir);
/* Seconds of one diffusers UNet call at the benchmark's shapes (64x64 latents, batch 2,
 * 77 x 768 context): python3 (or $MM_BENCH_PYTHON) bench/decoder_torch.py ARGS; < 0
 * when torch or diffusers are missing there. */
double mm_bench_diffusers_step(const char *args);

#endif
