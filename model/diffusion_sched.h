/* Diffusion samplers, configured from scheduler/scheduler_config.json the way diffusers'
 * <Scheduler>.from_config does it (a key present in the file is used, a key absent
 * takes the chosen scheduler's own default):
 *   PNDM with skip_prk_steps (PLMS; SD 1.5's default, n + 1 model calls for n steps),
 *   DDIM (eta 0), DPM-Solver++ 2M (solver_order 2, midpoint or heun, lower_order_final,
 *   final sigma zero or sigma_min).
 * All work on host float arrays (the latents are small) in double arithmetic on the
 * f32 alphas_cumprod table that diffusers builds (scaled_linear or linear betas).
 * Plus the documented seeded noise generator. No model code here. */
#ifndef MM_DIFFUSION_SCHED_H
#define MM_DIFFUSION_SCHED_H

#include <stdint.h>

#include "common/status.h"
#include "image_params.h" /* mm_diffusion_sampler_kind, its names, MM_DECODE_MAX_STEPS */

typedef struct mm_diffusion_sched mm_diffusion_sched;

/* dir: the scheduler/ folder; n_steps inference steps; n_elems: latent size (elements). */
mm_status mm_diffusion_sched_create(const char *dir, mm_diffusion_sampler_kind kind, int n_steps, int64_t n_elems,
                                    mm_diffusion_sched **out);
void mm_diffusion_sched_free(mm_diffusion_sched *s);

/* The model is called once per entry of the timestep list (PNDM repeats one timestep). */
int mm_diffusion_sched_len(const mm_diffusion_sched *s);
int64_t mm_diffusion_sched_timestep(const mm_diffusion_sched *s, int i);
/* Advances sample[n_elems] in place by one call's model output eps[n_elems]. */
mm_status mm_diffusion_sched_step(mm_diffusion_sched *s, const float *eps, float *sample);

/* Standard normal noise: uniforms from mm_rng_seed(seed) / mm_rng_uniform (common/
 * rng.h), taken in pairs (u1, u2) with u1 -> 1 - u1 in (0, 1], then Box-Muller:
 * z0 = sqrt(-2 ln u1) cos(2 pi u2), z1 = sqrt(-2 ln u1) sin(2 pi u2), written in order.
 * The same seed gives the same latents on every machine and backend. */
void mm_noise_normal(uint64_t seed, int64_t n, float *out);

#endif
