/* See validate.h. Every rule returns INVALID_ARGUMENT naming the field, except
 * features this server lacks (UNIMPLEMENTED). */
#include "validate.h"

#include <grpc/status.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int check_image_params(const Metamorph__V1__ImageParams *ip, mm_request *r, char *msg, size_t cap) {
    if (!ip) return 0;
    if (ip->steps < 0 || ip->steps > 1000)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "image.steps must be in [0, 1000] (got %d)", ip->steps);
    if (!isfinite(ip->guidance) || ip->guidance < 0 || ip->guidance > 100)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "image.guidance must be in [0, 100] (got %g)", ip->guidance);
    if (ip->sampler[0] && strcmp(ip->sampler, "pndm") && strcmp(ip->sampler, "ddim") &&
        strcmp(ip->sampler, "euler"))
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "image.sampler \"%.32s\" is not one of pndm, ddim, euler",
                    ip->sampler);
    r->return_visual_tokens = ip->return_visual_tokens;
    return 0;
}

/* Chat messages -> ids. Image parts are counted here; their visual tokens need the
 * encoder, which this server does not have yet. */
static int encode_chat(const Metamorph__V1__GenerateRequest *g, const mm_limits *lim, mm_request *r, char *msg,
                       size_t cap) {
    if (g->n_messages == 0) return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: the conversation is empty");
    mm_chat_message *cm = calloc(g->n_messages, sizeof *cm);
    char **texts = calloc(g->n_messages, sizeof *texts);
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
        size_t len = 0;
        for (size_t j = 0; j < m->n_parts; j++) {
            const Metamorph__V1__ContentPart *p = m->parts[j];
            if (p->kind_case == METAMORPH__V1__CONTENT_PART__KIND_TEXT) len += strlen(p->text);
            else if (p->kind_case == METAMORPH__V1__CONTENT_PART__KIND_IMAGE) {
                if (p->image.len == 0) {
                    code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages[%zu].parts[%zu].image is empty", i, j);
                    break;
                }
                n_images++;
            } else {
                code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages[%zu].parts[%zu]: neither text nor image", i, j);
                break;
            }
        }
        total += len;
        if (code) break;
        if (total > MAX_TEXT_BYTES) {
            code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: more than %u bytes of text", MAX_TEXT_BYTES);
            break;
        }
        texts[i] = malloc(len + 1);
        if (!texts[i]) {
            code = fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
            break;
        }
        size_t o = 0;
        for (size_t j = 0; j < m->n_parts; j++)
            if (m->parts[j]->kind_case == METAMORPH__V1__CONTENT_PART__KIND_TEXT) {
                size_t n = strlen(m->parts[j]->text);
                memcpy(texts[i] + o, m->parts[j]->text, n);
                o += n;
            }
        texts[i][o] = 0;
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
    if (mm_chat_encode(lim->tok, cm, g->n_messages, 1, &ids, &n) != MM_OK) {
        code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "messages: %s", mm_error_last());
        goto out;
    }
    if (g->generate_image) {
        int32_t *grown = realloc(ids, (n + 1) * sizeof *ids);
        if (!grown) {
            free(ids);
            code = fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
            goto out;
        }
        ids = grown;
        ids[n++] = lim->image_start_id;
        r->generate_image = 1;
    }
    r->prompt = ids;
    r->n_prompt = (int32_t)n;
    if ((int64_t)n >= lim->max_context)
        code = fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "the prompt has %zu tokens, the context holds %d", n,
                    lim->max_context);
out:
    if (texts)
        for (size_t i = 0; i < g->n_messages; i++) free(texts[i]);
    free(texts);
    free(cm);
    return code;
}

int mm_request_build(const Metamorph__V1__GenerateRequest *g, const mm_limits *lim, mm_request **out, char *msg,
                     size_t cap) {
    *out = NULL;
    if (strlen(g->request_id) > 128)
        return fail(GRPC_STATUS_INVALID_ARGUMENT, msg, cap, "request_id is longer than 128 bytes");
    mm_request *r = calloc(1, sizeof *r);
    if (!r) return fail(GRPC_STATUS_RESOURCE_EXHAUSTED, msg, cap, "out of memory");
    snprintf(r->request_id, sizeof r->request_id, "%s", g->request_id);
    int code = check_sampling(g->sampling, lim, r, msg, cap);
    if (!code) code = check_image_params(g->image, r, msg, cap);
    if (!code) code = encode_chat(g, lim, r, msg, cap);
    if (code) {
        mm_request_free(r);
        return code;
    }
    *out = r;
    return 0;
}
