/* See image_params.h. A library of its own (mm_image_params) so that the coordinator's
 * decoder pool names a sampler without linking the model code. */
#include "image_params.h"

#include <string.h>

static const char *const SAMPLER_NAMES[] = {"pndm", "ddim", "dpmpp2m"}; /* by mm_diffusion_sampler_kind */

void mm_image_params_default(mm_image_params *p) {
    *p = (mm_image_params){MM_DECODE_DEFAULT_STEPS, MM_DECODE_DEFAULT_GUIDANCE, MM_DECODE_DEFAULT_SAMPLER, 0};
}

int mm_diffusion_sampler_parse(const char *name, mm_diffusion_sampler_kind *out) {
    for (size_t i = 0; i < sizeof SAMPLER_NAMES / sizeof *SAMPLER_NAMES; i++)
        if (!strcmp(name, SAMPLER_NAMES[i])) {
            *out = (mm_diffusion_sampler_kind)i;
            return 0;
        }
    return -1;
}

const char *mm_diffusion_sampler_name(mm_diffusion_sampler_kind k) {
    return (unsigned)k < sizeof SAMPLER_NAMES / sizeof *SAMPLER_NAMES ? SAMPLER_NAMES[k] : "?";
}
