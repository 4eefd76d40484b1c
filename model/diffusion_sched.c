/* PNDM (skip_prk_steps), DDIM and DPM-Solver++ 2M after diffusers' scheduling_pndm.py,
 * scheduling_ddim.py and scheduling_dpmsolver_multistep.py (see diffusion_sched.h).
 * Timestep lists follow numpy exactly (round half to even, linspace/arange in double). */
#include "diffusion_sched.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "kernels/backend.h"

#define MAX_TRAIN 10000

typedef struct {
    int64_t num_train_timesteps, steps_offset;
    double beta_start, beta_end;
    const char *beta_schedule, *timestep_spacing, *prediction_type;
    int set_alpha_to_one, skip_prk_steps, clip_sample;
    double clip_sample_range;
    /* DPM-Solver */
    int64_t solver_order;
    const char *algorithm_type, *solver_type, *final_sigmas_type;
    int lower_order_final, euler_at_final;
} sched_config;

struct mm_diffusion_sched {
    mm_diffusion_sampler_kind kind;
    sched_config cfg;
    int64_t n; /* latent elements */
    int n_steps;
    double *alphas_cumprod; /* [num_train_timesteps], the f32 values diffusers uses */
    double final_alpha_cumprod;
    int64_t *timesteps; /* [len] */
    int len;
    int counter; /* calls made so far */
    /* PNDM */
    float *ets[4]; /* last model outputs, ets[0] oldest */
    int n_ets;
    float *cur_sample;
    float *work; /* the combined model output */
    /* DPM-Solver */
    double *sigmas;    /* [len + 1] */
    float *m_prev;     /* previous converted model output (x0 prediction) */
    float *m_cur;
    int lower_order_nums;
};

/* ---------------------------------------------------------------- config */

static mm_status config_parse(const mm_json *root, const char *file, mm_diffusion_sampler_kind kind, sched_config *c) {
    memset(c, 0, sizeof *c);
    int dpm = kind == MM_DIFFUSION_SAMPLER_DPMPP2M;
    /* defaults of each class's __init__ (diffusers 0.35) */
    CHECK(mm_json_int_in(root, file, "num_train_timesteps", 1000, 2, MAX_TRAIN, &c->num_train_timesteps));
    CHECK(mm_json_num_in(root, file, "beta_start", 0.0001, 0, 1, 0, &c->beta_start));
    CHECK(mm_json_num_in(root, file, "beta_end", 0.02, 0, 1, 0, &c->beta_end));
    CHECK(mm_json_str(root, file, "beta_schedule", "linear", &c->beta_schedule));
    CHECK(mm_json_str(root, file, "prediction_type", "epsilon", &c->prediction_type));
    CHECK(mm_json_str(root, file, "timestep_spacing", dpm ? "linspace" : "leading", &c->timestep_spacing));
    CHECK(mm_json_int_in(root, file, "steps_offset", 0, 0, MAX_TRAIN - 1, &c->steps_offset));
    CHECK(mm_json_bool(root, file, "set_alpha_to_one", kind == MM_DIFFUSION_SAMPLER_DDIM, &c->set_alpha_to_one));
    CHECK(mm_json_bool(root, file, "skip_prk_steps", 0, &c->skip_prk_steps));
    CHECK(mm_json_bool(root, file, "clip_sample", 1, &c->clip_sample));
    CHECK(mm_json_num_in(root, file, "clip_sample_range", 1.0, 0, 1e6, 1, &c->clip_sample_range));
    CHECK(mm_json_int_in(root, file, "solver_order", 2, 1, 3, &c->solver_order));
    CHECK(mm_json_str(root, file, "algorithm_type", "dpmsolver++", &c->algorithm_type));
    CHECK(mm_json_str(root, file, "solver_type", "midpoint", &c->solver_type));
    CHECK(mm_json_str(root, file, "final_sigmas_type", "zero", &c->final_sigmas_type));
    CHECK(mm_json_bool(root, file, "lower_order_final", 1, &c->lower_order_final));
    CHECK(mm_json_bool(root, file, "euler_at_final", 0, &c->euler_at_final));
    const json_t *tb = (const json_t *)mm_json_get(root, "trained_betas");
    if (tb && !json_is_null(tb)) return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: trained_betas is not supported", file);
    static const char *off[] = {"thresholding", "rescale_betas_zero_snr", "use_karras_sigmas", "use_exponential_sigmas",
                                "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"};
    for (size_t i = 0; i < sizeof off / sizeof *off; i++) {
        int v;
        CHECK(mm_json_bool(root, file, off[i], 0, &v));
        if (v) return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: '%s' true is not supported", file, off[i]);
    }
    if (strcmp(c->beta_schedule, "scaled_linear") && strcmp(c->beta_schedule, "linear"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: beta_schedule '%s' (scaled_linear, linear)", file, c->beta_schedule);
    if (strcmp(c->prediction_type, "epsilon"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: prediction_type '%s' (only epsilon)", file, c->prediction_type);
    if (strcmp(c->timestep_spacing, "leading") && strcmp(c->timestep_spacing, "linspace") &&
        strcmp(c->timestep_spacing, "trailing"))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: timestep_spacing '%s' (leading, linspace, trailing)", file, c->timestep_spacing);
    if (kind == MM_DIFFUSION_SAMPLER_PNDM && !c->skip_prk_steps)
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: PNDM needs skip_prk_steps true (the PRK warm-up is not implemented)", file);
    if (dpm && (strcmp(c->algorithm_type, "dpmsolver++") || (c->solver_order != 1 && c->solver_order != 2) ||
                (strcmp(c->solver_type, "midpoint") && strcmp(c->solver_type, "heun")) ||
                (strcmp(c->final_sigmas_type, "zero") && strcmp(c->final_sigmas_type, "sigma_min"))))
        return MM_ERROR(MM_ERR_UNSUPPORTED, "%s: DPM-Solver supports algorithm_type dpmsolver++, solver_order 1-2, "
                        "solver_type midpoint/heun, final_sigmas_type zero/sigma_min", file);
    return MM_OK;
}

/* torch.linspace in f32 (CPU kernel: first half from start, second half from end). */
static float linspace_f32(float start, float end, int64_t steps, int64_t i) {
    float step = (end - start) / (float)(steps - 1);
    return i < steps / 2 ? start + step * (float)i : end - step * (float)(steps - i - 1);
}

static void make_alphas(const sched_config *c, double *ac) {
    int64_t N = c->num_train_timesteps;
    double prod = 1.0; /* torch.cumprod on CPU accumulates f32 inputs in double */
    for (int64_t i = 0; i < N; i++) {
        float beta;
        if (!strcmp(c->beta_schedule, "scaled_linear")) {
            float r = linspace_f32((float)sqrt(c->beta_start), (float)sqrt(c->beta_end), N, i);
            beta = r * r;
        } else {
            beta = linspace_f32((float)c->beta_start, (float)c->beta_end, N, i);
        }
        prod *= (double)(1.0f - beta);
        ac[i] = (double)(float)prod;
    }
}

/* numpy's np.round: half to even (the default FP rounding mode) */
static int64_t np_round(double v) { return (int64_t)nearbyint(v); }

/* np.linspace(0, stop, num)[i] */
static double np_linspace(double stop, int64_t num, int64_t i) {
    if (num == 1) return 0.0;
    return i == num - 1 ? stop : (double)i * (stop / (double)(num - 1));
}

static mm_status make_timesteps(mm_diffusion_sched *s) {
    const sched_config *c = &s->cfg;
    int64_t N = c->num_train_timesteps, n = s->n_steps;
    const char *sp = c->timestep_spacing;
    int64_t *t = malloc((size_t)(n + 2) * sizeof *t);
    CHECK(CHECK_ALLOC(t));
    int len = 0;
    if (s->kind == MM_DIFFUSION_SAMPLER_DPMPP2M) {
        /* n + 1 points, reversed, last dropped; last_timestep = N (lambda_min_clipped -inf) */
        if (!strcmp(sp, "linspace")) {
            for (int64_t i = n; i >= 1; i--) t[len++] = np_round(np_linspace((double)(N - 1), n + 1, i));
        } else if (!strcmp(sp, "leading")) {
            int64_t ratio = N / (n + 1);
            for (int64_t i = n; i >= 1; i--) t[len++] = i * ratio + c->steps_offset;
        } else {
            double ratio = (double)N / (double)n;
            int64_t cnt = (int64_t)ceil((double)N / ratio);
            for (int64_t i = 0; i < cnt && len < n + 1; i++) t[len++] = np_round((double)N - (double)i * ratio) - 1;
        }
    } else {
        /* ascending base list ts[n] */
        int64_t *ts = malloc((size_t)n * sizeof *ts);
        if (!ts) {
            free(t);
            return MM_ERROR(MM_ERR_NOMEM, "timesteps");
        }
        if (!strcmp(sp, "linspace")) {
            for (int64_t i = 0; i < n; i++) ts[i] = np_round(np_linspace((double)(N - 1), n, i));
        } else if (!strcmp(sp, "leading")) {
            int64_t ratio = N / n;
            for (int64_t i = 0; i < n; i++) ts[i] = i * ratio + c->steps_offset;
        } else { /* np.round(np.arange(N, 0, -N/n))[::-1] - 1 */
            double ratio = (double)N / (double)n;
            for (int64_t i = 0; i < n; i++) ts[n - 1 - i] = np_round((double)N - (double)i * ratio) - 1;
        }
        if (s->kind == MM_DIFFUSION_SAMPLER_PNDM) {
            /* plms: [ts[:-1], ts[-2:-1], ts[-1:]] reversed: the second-to-last repeats */
            int64_t tmp[n + 1];
            int k = 0;
            for (int64_t i = 0; i < n - 1; i++) tmp[k++] = ts[i];
            if (n >= 2) tmp[k++] = ts[n - 2];
            tmp[k++] = ts[n - 1];
            for (int i = k - 1; i >= 0; i--) t[len++] = tmp[i];
        } else {
            for (int64_t i = n - 1; i >= 0; i--) t[len++] = ts[i];
        }
        free(ts);
    }
    for (int i = 0; i < len; i++)
        if (t[i] < 0 || t[i] >= N) {
            long long bad = (long long)t[i];
            free(t);
            return MM_ERROR(MM_ERR_INVALID,
                            "scheduler: %d steps with %s reach timestep %lld, outside the %lld training timesteps "
                            "(use fewer steps)", s->n_steps, mm_diffusion_sampler_name(s->kind), bad, (long long)N);
        }
    s->timesteps = t, s->len = len;
    return MM_OK;
}

mm_status mm_diffusion_sched_create(const char *dir, mm_diffusion_sampler_kind kind, int n_steps, int64_t n_elems,
                                    mm_diffusion_sched **out) {
    if (n_steps < 1 || n_steps > MM_DECODE_MAX_STEPS || n_elems <= 0)
        return MM_ERROR(MM_ERR_INVALID, "scheduler: %d steps (1..%d), %lld elements", n_steps, MM_DECODE_MAX_STEPS,
                        (long long)n_elems);
    char file[4096];
    snprintf(file, sizeof file, "%s/scheduler_config.json", dir);
    mm_json *root;
    CHECK(mm_json_load(file, &root));
    mm_diffusion_sched *s = calloc(1, sizeof *s);
    mm_status st = CHECK_ALLOC(s);
    if (st != MM_OK) {
        mm_json_free(root);
        return st;
    }
    s->kind = kind, s->n = n_elems, s->n_steps = n_steps;
    st = config_parse(root, file, kind, &s->cfg);
    /* strings point into the JSON document: keep only what is needed past this point */
    const char *solver = s->cfg.solver_type, *final = s->cfg.final_sigmas_type;
    int heun = solver && !strcmp(solver, "heun"), final_min = final && !strcmp(final, "sigma_min");
    if (st == MM_OK && n_steps > s->cfg.num_train_timesteps)
        st = MM_ERROR(MM_ERR_INVALID, "scheduler: %d steps > num_train_timesteps %lld", n_steps, (long long)s->cfg.num_train_timesteps);
    if (st == MM_OK) {
        s->alphas_cumprod = malloc((size_t)s->cfg.num_train_timesteps * sizeof(double));
        st = CHECK_ALLOC(s->alphas_cumprod);
    }
    if (st == MM_OK) {
        make_alphas(&s->cfg, s->alphas_cumprod);
        s->final_alpha_cumprod = s->cfg.set_alpha_to_one ? 1.0 : s->alphas_cumprod[0];
        st = make_timesteps(s);
    }
    mm_json_free(root);
    s->cfg.beta_schedule = s->cfg.timestep_spacing = s->cfg.prediction_type = NULL;
    s->cfg.algorithm_type = NULL;
    s->cfg.solver_type = heun ? "heun" : "midpoint";
    s->cfg.final_sigmas_type = final_min ? "sigma_min" : "zero";
    if (st == MM_OK && kind == MM_DIFFUSION_SAMPLER_DPMPP2M) {
        s->sigmas = malloc((size_t)(s->len + 1) * sizeof(double));
        s->m_prev = calloc((size_t)n_elems, sizeof(float));
        s->m_cur = calloc((size_t)n_elems, sizeof(float));
        st = s->sigmas && s->m_prev && s->m_cur ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "scheduler state");
        if (st == MM_OK) {
            for (int i = 0; i < s->len; i++) {
                double a = s->alphas_cumprod[s->timesteps[i]];
                s->sigmas[i] = (float)sqrt((1.0 - a) / a); /* diffusers keeps sigmas in f32 */
            }
            double a0 = s->alphas_cumprod[0];
            s->sigmas[s->len] = final_min ? (float)sqrt((1.0 - a0) / a0) : 0.0;
        }
    }
    if (st == MM_OK && kind == MM_DIFFUSION_SAMPLER_PNDM) {
        for (int i = 0; i < 4 && st == MM_OK; i++) {
            s->ets[i] = calloc((size_t)n_elems, sizeof(float));
            st = CHECK_ALLOC(s->ets[i]);
        }
        if (st == MM_OK) {
            s->cur_sample = calloc((size_t)n_elems, sizeof(float));
            s->work = calloc((size_t)n_elems, sizeof(float));
            st = s->cur_sample && s->work ? MM_OK : MM_ERROR(MM_ERR_NOMEM, "scheduler state");
        }
    }
    if (st != MM_OK) {
        mm_diffusion_sched_free(s);
        return st;
    }
    *out = s;
    return MM_OK;
}

void mm_diffusion_sched_free(mm_diffusion_sched *s) {
    if (!s) return;
    free(s->alphas_cumprod);
    free(s->timesteps);
    for (int i = 0; i < 4; i++) free(s->ets[i]);
    free(s->cur_sample);
    free(s->work);
    free(s->sigmas);
    free(s->m_prev);
    free(s->m_cur);
    free(s);
}

int mm_diffusion_sched_len(const mm_diffusion_sched *s) { return s->len; }
int64_t mm_diffusion_sched_timestep(const mm_diffusion_sched *s, int i) { return i >= 0 && i < s->len ? s->timesteps[i] : -1; }

/* ---------------------------------------------------------------- steps */

static double alpha_at(const mm_diffusion_sched *s, int64_t t) { return t >= 0 ? s->alphas_cumprod[t] : s->final_alpha_cumprod; }

/* PNDM's _get_prev_sample (formula (9) of the PNDM paper) from t to prev. */
static void pndm_prev(const mm_diffusion_sched *s, const float *sample, int64_t t, int64_t prev, const float *eps, float *out) {
    double at = alpha_at(s, t), ap = alpha_at(s, prev), bt = 1.0 - at, bp = 1.0 - ap;
    double sample_coeff = sqrt(ap / at);
    double denom = at * sqrt(bp) + sqrt(at * bt * ap);
    double ec = (ap - at) / denom;
    for (int64_t i = 0; i < s->n; i++) out[i] = (float)(sample_coeff * sample[i] - ec * eps[i]);
}

static void pndm_step(mm_diffusion_sched *s, const float *eps, float *sample) {
    int64_t ratio = s->cfg.num_train_timesteps / s->n_steps;
    int64_t t = s->timesteps[s->counter], prev = t - ratio;
    int64_t n = s->n;
    if (s->counter != 1) { /* keep the last 3 and append: ets = ets[-3:] + [eps] */
        if (s->n_ets == 4) {
            float *oldest = s->ets[0];
            memmove(s->ets, s->ets + 1, 3 * sizeof *s->ets);
            s->ets[3] = oldest;
            s->n_ets = 3;
        }
        memcpy(s->ets[s->n_ets++], eps, (size_t)n * sizeof(float));
    } else {
        prev = t, t = t + ratio;
    }
    float *comb = s->work;
    const float *src = sample;
    int k = s->n_ets;
    float *const *E = s->ets;
    if (k == 1 && s->counter == 0) {
        memcpy(comb, eps, (size_t)n * sizeof(float));
        memcpy(s->cur_sample, sample, (size_t)n * sizeof(float));
    } else if (k == 1 && s->counter == 1) {
        for (int64_t i = 0; i < n; i++) comb[i] = (eps[i] + E[0][i]) / 2.0f;
        src = s->cur_sample;
    } else if (k == 2) {
        for (int64_t i = 0; i < n; i++) comb[i] = (3.0f * E[1][i] - E[0][i]) / 2.0f;
    } else if (k == 3) {
        for (int64_t i = 0; i < n; i++) comb[i] = (23.0f * E[2][i] - 16.0f * E[1][i] + 5.0f * E[0][i]) / 12.0f;
    } else {
        for (int64_t i = 0; i < n; i++)
            comb[i] = (1.0f / 24.0f) * (55.0f * E[3][i] - 59.0f * E[2][i] + 37.0f * E[1][i] - 9.0f * E[0][i]);
    }
    pndm_prev(s, src, t, prev, comb, sample);
}

static void ddim_step(mm_diffusion_sched *s, const float *eps, float *sample) {
    int64_t t = s->timesteps[s->counter], prev = t - s->cfg.num_train_timesteps / s->n_steps;
    double at = alpha_at(s, t), ap = alpha_at(s, prev), bt = 1.0 - at;
    double r = s->cfg.clip_sample_range;
    for (int64_t i = 0; i < s->n; i++) {
        double x0 = (sample[i] - sqrt(bt) * eps[i]) / sqrt(at);
        if (s->cfg.clip_sample) x0 = x0 < -r ? -r : x0 > r ? r : x0;
        sample[i] = (float)(sqrt(ap) * x0 + sqrt(1.0 - ap) * eps[i]);
    }
}

static void sigma_to_alpha_sigma(double sigma, double *alpha_t, double *sigma_t) {
    *alpha_t = 1.0 / sqrt(sigma * sigma + 1.0);
    *sigma_t = sigma * *alpha_t;
}

static void dpm_step(mm_diffusion_sched *s, const float *eps, float *sample) {
    int i = s->counter, last = s->len - 1;
    int64_t n = s->n;
    int lower_final = i == last && (s->cfg.euler_at_final || (s->cfg.lower_order_final && s->len < 15) ||
                                    !strcmp(s->cfg.final_sigmas_type, "zero"));
    int lower_second = i == last - 1 && s->cfg.lower_order_final && s->len < 15;
    (void)lower_second; /* only matters for order 3 */
    /* convert eps to the x0 prediction at sigma_i */
    double a_s0, s_s0;
    sigma_to_alpha_sigma(s->sigmas[i], &a_s0, &s_s0);
    float *tmp = s->m_prev;
    s->m_prev = s->m_cur, s->m_cur = tmp;
    for (int64_t k = 0; k < n; k++) s->m_cur[k] = (float)((sample[k] - s_s0 * eps[k]) / a_s0);
    double sig_t = s->sigmas[i + 1];
    if (sig_t == 0.0) { /* alpha_t = 1, sigma_t = 0, h = inf: x = x0 */
        memcpy(sample, s->m_cur, (size_t)n * sizeof(float));
    } else {
        double a_t, s_t;
        sigma_to_alpha_sigma(sig_t, &a_t, &s_t);
        double lam_t = log(a_t) - log(s_t), lam_s0 = log(a_s0) - log(s_s0), h = lam_t - lam_s0;
        double c_x = s_t / s_s0, c_d0 = a_t * (exp(-h) - 1.0);
        if (s->cfg.solver_order == 1 || s->lower_order_nums < 1 || lower_final) {
            for (int64_t k = 0; k < n; k++) sample[k] = (float)(c_x * sample[k] - c_d0 * s->m_cur[k]);
        } else {
            double a_s1, s_s1;
            sigma_to_alpha_sigma(s->sigmas[i - 1], &a_s1, &s_s1);
            double lam_s1 = log(a_s1) - log(s_s1), r0 = (lam_s0 - lam_s1) / h;
            int heun = !strcmp(s->cfg.solver_type, "heun");
            for (int64_t k = 0; k < n; k++) {
                double d0 = s->m_cur[k], d1 = (1.0 / r0) * ((double)s->m_cur[k] - s->m_prev[k]);
                double x = c_x * sample[k] - c_d0 * d0;
                x += heun ? a_t * ((exp(-h) - 1.0) / h + 1.0) * d1 : -0.5 * c_d0 * d1;
                sample[k] = (float)x;
            }
        }
    }
    if (s->lower_order_nums < s->cfg.solver_order) s->lower_order_nums++;
}

mm_status mm_diffusion_sched_step(mm_diffusion_sched *s, const float *eps, float *sample) {
    if (s->counter >= s->len) return MM_ERROR(MM_ERR_INVALID, "scheduler: step %d past the last of %d", s->counter, s->len);
    switch (s->kind) {
    case MM_DIFFUSION_SAMPLER_PNDM: pndm_step(s, eps, sample); break;
    case MM_DIFFUSION_SAMPLER_DDIM: ddim_step(s, eps, sample); break;
    case MM_DIFFUSION_SAMPLER_DPMPP2M: dpm_step(s, eps, sample); break;
    default: return MM_ERROR(MM_ERR_INVALID, "scheduler: unknown sampler %d", (int)s->kind);
    }
    s->counter++;
    return MM_OK;
}

void mm_noise_normal(uint64_t seed, int64_t n, float *out) {
    uint64_t st = mm_rng_seed(seed);
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = 1.0 - (double)mm_rng_uniform(&st), u2 = (double)mm_rng_uniform(&st);
        double r = sqrt(-2.0 * log(u1));
        out[i] = (float)(r * cos(2.0 * M_PI * u2));
        if (i + 1 < n) out[i + 1] = (float)(r * sin(2.0 * M_PI * u2));
    }
}
