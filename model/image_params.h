/* The parameters of one image drawn by the diffusion decoder, in the one shape every
 * process holds them: the coordinator's validated request, the decoder pool's job and
 * mm-decoder's sampling loop. Their defaults and limits live here and nowhere else.
 * On the wire they travel as metamorph.v1.ImageParams (client -> coordinator) and as
 * PoolHeader's fields (coordinator -> mm-decoder); those are formats, not more shapes.
 * Data and names only: no model code, no wire code. */
#ifndef MM_IMAGE_PARAMS_H
#define MM_IMAGE_PARAMS_H

#include <stdint.h>

#define MM_DECODE_MAX_STEPS 1000       /* diffusion steps a request or a job may ask for */
#define MM_DECODE_DEFAULT_STEPS 50     /* the serve config's image_steps default (PNDM in SD 1.5's demo) */
#define MM_DECODE_DEFAULT_GUIDANCE 7.5f
#define MM_DECODE_MAX_GUIDANCE 100.0f

/* The diffusion samplers (diffusion_sched.h); not the token sampler (sampler.h, mm_sampler). */
typedef enum {
    MM_DIFFUSION_SAMPLER_PNDM = 0,
    MM_DIFFUSION_SAMPLER_DDIM,
    MM_DIFFUSION_SAMPLER_DPMPP2M
} mm_diffusion_sampler_kind;
#define MM_DECODE_DEFAULT_SAMPLER MM_DIFFUSION_SAMPLER_PNDM

typedef struct {
    int32_t steps;           /* 1..MM_DECODE_MAX_STEPS */
    float guidance;          /* classifier-free guidance scale; <= 1: no guidance */
    mm_diffusion_sampler_kind sampler;
    uint64_t seed;           /* of the initial noise (mm_noise_normal) */
} mm_image_params;

/* The defaults: MM_DECODE_DEFAULT_STEPS, _GUIDANCE, _SAMPLER, seed 0. */
void mm_image_params_default(mm_image_params *p);

/* "pndm", "ddim", "dpmpp2m" -> kind; returns 0 on success. */
int mm_diffusion_sampler_parse(const char *name, mm_diffusion_sampler_kind *out);
const char *mm_diffusion_sampler_name(mm_diffusion_sampler_kind k);

#endif
