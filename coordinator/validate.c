/* See validate.h. Every rule returns INVALID_ARGUMENT naming the field, except
 * features this server lacks (UNIMPLEMENTED). */
#include "validate.h"

#include <grpc/status.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "model/image_params.h"
#include "model/metamorph.h"

#define MAX_STOP_BYTES 128
#define MAX_TEXT_BYTES (16u << 20)

static int fail(int code, char *msg, size_t cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(int code, char *msg, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return code;
}

static int check_sampling(const Metamorph__V1__SamplingParams *sp, const mm_limits *lim, mm_request *r, char *msg,
                          size_t cap) {
    r->sampling = (mm_sampling){0.0f, 1.0f, 0};
    r->max_new_tokens = lim->max_new_tokens;
    if (!sp) return 0;
    if (!isfinite(sp->temperature) || sp->temperature < 0 || sp->temperature > 100)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "sampling.temperature must be in [0, 100] (got %g)",
                    sp->temperature);
    if (!isfinite(sp->top_p) || sp->top_p < 0 || sp->top_p > 1)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "sampling.top_p must be in (0, 1], 0 = unset (got %g)",
                    sp->top_p);
    if (sp->top_k < 0 || sp->top_k > lim->vocab_size)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "sampling.top_k must be in [0, %d] (got %d)", lim->vocab_size,
                    sp->top_k);
    if (sp->max_new_tokens < 0 || sp->max_new_tokens > lim->max_context)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "sampling.max_new_tokens must be in [0, %d] (got %d)",
                    lim->max_context, sp->max_new_tokens);
    if (sp->n_stop > (size_t)lim->max_stop_strings)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "sampling.stop: %zu stop strings, at most %d", sp->n_stop,
                    lim->max_stop_strings);
    for (size_t i = 0; i < sp->n_stop; i++) {
        size_t n = strlen(sp->stop[i]);
        if (n == 0 || n > MAX_STOP_BYTES)
            return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "sampling.stop[%zu] must have 1..%d bytes", i,
                        MAX_STOP_BYTES);
    }
    r->sampling = (mm_sampling){sp->temperature, sp->top_p > 0 ? sp->top_p : 1.0f, sp->top_k};
    r->seed = sp->seed;
    if (sp->max_new_tokens > 0) r->max_new_tokens = sp->max_new_tokens;
    if (sp->n_stop) {
        r->stop = calloc(sp->n_stop, sizeof *r->stop);
        if (!r->stop) return fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
        for (size_t i = 0; i < sp->n_stop; i++) {
            r->stop[i] = strdup(sp->stop[i]);
            if (!r->stop[i]) return fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
            r->n_stop++;
        }
    }
    return 0;
}

/* The image-decoding parameters, unset ones (0, "") replaced by the defaults. */
static int check_image_params(const Metamorph__V1__ImageParams *ip, const mm_limits *lim, mm_request *r, char *msg,
                              size_t cap) {
    mm_image_params_default(&r->image);
    r->image.steps = lim->image_steps;
    if (!ip) return 0;
    if (ip->steps < 0 || ip->steps > MM_DECODE_MAX_STEPS)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "image.steps must be in [0, %d] (got %d)",
                    MM_DECODE_MAX_STEPS, ip->steps);
    if (!isfinite(ip->guidance) || ip->guidance < 0 || ip->guidance > MM_DECODE_MAX_GUIDANCE)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "image.guidance must be in [0, %g] (got %g)",
                    (double)MM_DECODE_MAX_GUIDANCE, ip->guidance);
    if (ip->sampler[0] && mm_diffusion_sampler_parse(ip->sampler, &r->image.sampler) != 0)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "image.sampler \"%.32s\" is not one of pndm, ddim, dpmpp2m",
                    ip->sampler);
    if (ip->steps > 0) r->image.steps = ip->steps;
    if (ip->guidance > 0) r->image.guidance = ip->guidance;
    r->image.seed = ip->seed;
    r->return_visual_tokens = ip->return_visual_tokens;
    return 0;
}

/* Copies the image parts' bytes into r, in prompt order (the scheduler thread sends
 * them to the encoder; the decoded request is freed before that). */
static int take_images(const Metamorph__V1__GenerateRequest *g, mm_request *r, int n_images, char *msg, size_t cap) {
    r->image_data = calloc((size_t)n_images, sizeof *r->image_data);
    r->image_len = calloc((size_t)n_images, sizeof *r->image_len);
    r->image_where = calloc((size_t)n_images, sizeof *r->image_where);
    if (!r->image_data || !r->image_len || !r->image_where)
        return fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
    r->n_images = n_images;
    int k = 0;
    for (size_t i = 0; i < g->n_messages; i++)
        for (size_t j = 0; j < g->messages[i]->n_parts; j++) {
            const Metamorph__V1__ContentPart *p = g->messages[i]->parts[j];
            if (p->kind_case != METAMORPH__V1__CONTENT_PART__KIND_IMAGE) continue;
            r->image_data[k] = malloc(p->image.len);
            if (!r->image_data[k]) return fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
            memcpy(r->image_data[k], p->image.data, p->image.len);
            r->image_len[k] = p->image.len;
            snprintf(r->image_where[k], sizeof r->image_where[k], "messages[%zu].parts[%zu]", i, j);
            k++;
        }
    return 0;
}

/* Chat messages -> prompt ids, built by model/metamorph.c exactly as mm-run builds
 * them (each run of images "<image_start><image_end>"... + "\n", placeholders marked),
 * and the image parts' bytes, which the scheduler thread has encoded. */
static int encode_chat(const Metamorph__V1__GenerateRequest *g, const mm_limits *lim, mm_request *r, char *msg,
                       size_t cap) {
    if (g->n_messages == 0) return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: the conversation is empty");
    mm_chat_message *cm = calloc(g->n_messages, sizeof *cm);
    char **texts = calloc(g->n_messages, sizeof *texts);
    mm_content_part *parts = NULL;
    int code = 0;
    size_t n_images = 0, total = 0;
    if (!cm || !texts) {
        code = fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n_messages && !code; i++) {
        const Metamorph__V1__ChatMessage *m = g->messages[i];
        if (strcmp(m->role, "user") && strcmp(m->role, "assistant") && strcmp(m->role, "system")) {
            code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap,
                        "messages[%zu].role: unknown role \"%.32s\" (user, assistant or system)", i, m->role);
            break;
        }
        free(parts);
        parts = calloc(m->n_parts ? m->n_parts : 1, sizeof *parts);
        if (!parts) {
            code = fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
            break;
        }
        for (size_t j = 0; j < m->n_parts; j++) {
            const Metamorph__V1__ContentPart *p = m->parts[j];
            if (p->kind_case == METAMORPH__V1__CONTENT_PART__KIND_TEXT) {
                total += strlen(p->text);
                parts[j] = (mm_content_part){0, p->text};
            } else if (p->kind_case == METAMORPH__V1__CONTENT_PART__KIND_IMAGE) {
                if (p->image.len == 0) {
                    code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages[%zu].parts[%zu].image is empty", i, j);
                    break;
                }
                parts[j] = (mm_content_part){1, NULL};
                n_images++;
            } else {
                code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages[%zu].parts[%zu]: neither text nor image", i, j);
                break;
            }
        }
        if (code) break;
        if (total > MAX_TEXT_BYTES) {
            code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: more than %u bytes of text", MAX_TEXT_BYTES);
            break;
        }
        if (mm_metamorph_render_content(parts, m->n_parts, &texts[i]) != MM_OK) {
            code = fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
            break;
        }
        cm[i] = (mm_chat_message){m->role, texts[i]};
    }
    if (!code && n_images > (size_t)lim->max_images)
        code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: %zu images, at most %d per request", n_images,
                    lim->max_images);
    if (!code && n_images > 0 && !lim->vision_input)
        code = fail(GRPC_STATUS_UNIMPLEMENTED, msg, cap,
                    "image inputs need the vision encoder, which this server does not have");
    if (!code && g->generate_image && !lim->image_generation)
        code = fail(GRPC_STATUS_UNIMPLEMENTED, msg, cap, "generate_image needs a model with a vision head");
    if (code) goto out;
    int32_t *ids = NULL;
    size_t n = 0;
    int n_marked = 0;
    if (mm_metamorph_prompt_encode(lim->tok, cm, g->n_messages, g->generate_image, &ids, &n, &n_marked) != MM_OK) {
        code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: %s", mm_error_last());
        goto out;
    }
    r->prompt = ids;
    r->n_prompt = (int32_t)n;
    r->generate_image = g->generate_image;
    if ((size_t)n_marked != n_images) {
        code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap,
                    "messages: the text holds <image> markers (%d for %zu image parts); "
                    "send images as image parts", n_marked, n_images);
        goto out;
    }
    int64_t rows = (int64_t)n + (int64_t)n_images * (lim->n_image_tokens - 1);
    r->n_rows = rows < INT32_MAX ? (int32_t)rows : INT32_MAX;
    if (rows >= lim->max_context) {
        code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "the prompt has %lld tokens (%zu images of %d), the context holds %d",
                    (long long)rows, n_images, lim->n_image_tokens, lim->max_context);
        goto out;
    }
    if (n_images) code = take_images(g, r, (int)n_images, msg, cap);
out:
    if (texts)
        for (size_t i = 0; i < g->n_messages; i++) free(texts[i]);
    free(texts);
    free(cm);
    free(parts);
    return code;
}

/* raw_prompt: one message of text parts, no template: BOS + its text (mm-run --raw). */
static int encode_raw(const Metamorph__V1__GenerateRequest *g, const mm_limits *lim, mm_request *r, char *msg,
                      size_t cap) {
    if (g->n_messages != 1)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "raw_prompt: want exactly one message (got %zu)", g->n_messages);
    if (g->generate_image)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "raw_prompt: generate_image needs the chat template");
    const Metamorph__V1__ChatMessage *m = g->messages[0];
    size_t total = 0;
    for (size_t j = 0; j < m->n_parts; j++) {
        if (m->parts[j]->kind_case != METAMORPH__V1__CONTENT_PART__KIND_TEXT)
            return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "raw_prompt: messages[0].parts[%zu] is not text", j);
        total += strlen(m->parts[j]->text);
    }
    if (total > MAX_TEXT_BYTES)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: more than %u bytes of text", MAX_TEXT_BYTES);
    char *text = malloc(total + 1);
    if (!text) return fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
    size_t at = 0;
    for (size_t j = 0; j < m->n_parts; j++) {
        size_t n = strlen(m->parts[j]->text);
        memcpy(text + at, m->parts[j]->text, n);
        at += n;
    }
    text[at] = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    mm_status s = mm_metamorph_prompt_encode_raw(lim->tok, lim->bos_id, text, &ids, &n);
    free(text);
    if (s != MM_OK) return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: %s", mm_error_last());
    r->prompt = ids, r->n_prompt = (int32_t)n, r->n_rows = (int32_t)n;
    if (n == 0) return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "raw_prompt: the prompt is empty");
    if ((int64_t)n >= lim->max_context)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "the prompt has %zu tokens, the context holds %d", n,
                    lim->max_context);
    return 0;
}

/* 16 random hex digits: the id of a request whose client gave none (the proto's promise). */
static void server_request_id(char *out, size_t cap) {
    uint8_t b[8];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        static _Atomic uint64_t fallback;
        uint64_t x = ++fallback * 0x9E3779B97F4A7C15ull;
        memcpy(b, &x, sizeof b);
    }
    for (size_t i = 0; i < sizeof b && 2 * i + 2 < cap; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

int mm_request_build(const Metamorph__V1__GenerateRequest *g, const mm_limits *lim, mm_request **out, char *msg,
                     size_t cap) {
    *out = NULL;
    if (strlen(g->request_id) > 128)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "request_id is longer than 128 bytes");
    mm_request *r = calloc(1, sizeof *r);
    if (!r) return fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
    if (g->request_id[0]) snprintf(r->request_id, sizeof r->request_id, "%s", g->request_id);
    else server_request_id(r->request_id, sizeof r->request_id);
    int code = check_sampling(g->sampling, lim, r, msg, cap);
    if (!code) code = check_image_params(g->image, lim, r, msg, cap);
    if (!code) code = g->raw_prompt ? encode_raw(g, lim, r, msg, cap) : encode_chat(g, lim, r, msg, cap);
    if (code) {
        mm_request_free(r);
        return code;
    }
    *out = r;
    return 0;
}
