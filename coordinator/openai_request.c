/* See openai_request.h. Every refusal names the field (OpenAI's "param") and says why;
 * ranges that gRPC requests share (temperature, top_p, token counts, stop strings,
 * image steps) are left to validate.c so both doors refuse the same values the same
 * way. */
#include "openai_request.h"

#include <grpc/status.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define COMPLETIONS_DEFAULT_MAX_TOKENS 16 /* OpenAI's default for /v1/completions */

static int fail(mm_oai_error *err, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(mm_oai_error *err, int status, const char *param, const char *fmt, ...) {
    err->http_status = status;
    err->type = status == 404 ? "not_found_error" : status == 413 ? "request_too_large" : "invalid_request_error";
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return status;
}

void mm_oai_error_from_grpc(int code, const char *message, mm_oai_error *err) {
    int status;
    const char *type;
    switch (code) {
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_UNIMPLEMENTED:
    case GRPC_STATUS_OUT_OF_RANGE: status = 400, type = "invalid_request_error"; break;
    case GRPC_STATUS_UNAUTHENTICATED: status = 401, type = "authentication_error"; break;
    case GRPC_STATUS_PERMISSION_DENIED: status = 403, type = "permission_error"; break;
    case GRPC_STATUS_NOT_FOUND: status = 404, type = "not_found_error"; break;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: status = 429, type = "rate_limit_error"; break;
    case GRPC_STATUS_CANCELLED: status = 499, type = "cancelled"; break;
    case GRPC_STATUS_UNAVAILABLE: status = 503, type = "service_unavailable"; break;
    case GRPC_STATUS_DEADLINE_EXCEEDED: status = 504, type = "timeout"; break;
    default: status = 500, type = "server_error"; break;
    }
    err->http_status = status, err->type = type, err->param[0] = 0;
    snprintf(err->message, sizeof err->message, "%s", message);
}

/* ---------------------------------------------------------------- field readers */

/* Each returns 0 when the field is absent or null (leaving *out), 1 when read, or an
 * HTTP status after fail(). */
static int get_bool(json_t *o, const char *key, int *out, mm_oai_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return fail(err, 400, key, "'%s' must be a boolean", key);
    *out = json_is_true(v);
    return 1;
}

static int get_number(json_t *o, const char *key, double *out, mm_oai_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return fail(err, 400, key, "'%s' must be a number", key);
    *out = json_number_value(v);
    if (!isfinite(*out)) return fail(err, 400, key, "'%s' must be finite", key);
    return 1;
}

static int get_int(json_t *o, const char *key, long long lo, long long hi, long long *out, mm_oai_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return fail(err, 400, key, "'%s' must be an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return fail(err, 400, key, "'%s' must be in [%lld, %lld] (got %lld)", key, lo, hi, x);
    *out = x;
    return 1;
}

static int get_string(json_t *o, const char *key, const char **out, mm_oai_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return fail(err, 400, key, "'%s' must be a string", key);
    *out = json_string_value(v);
    return 1;
}

/* A status > 1 from a reader ends the parse. */
#define READ(call)                          \
    do {                                    \
        int rc_ = (call);                   \
        if (rc_ > 1) return rc_;            \
    } while (0)

/* Fields we cannot honour: refused when set to anything but their neutral value. */
static int refuse_unsupported(json_t *o, mm_oai_kind kind, mm_oai_error *err) {
    static const char *const NON_NULL[] = {"tools", "tool_choice", "functions", "function_call", "logit_bias",
                                           "prediction", "audio", "suffix", "best_of"};
    for (size_t i = 0; i < sizeof NON_NULL / sizeof *NON_NULL; i++) {
        json_t *v = json_object_get(o, NON_NULL[i]);
        if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0) &&
            !(json_is_array(v) && json_array_size(v) == 0) && !(json_is_integer(v) && json_integer_value(v) == 1))
            return fail(err, 400, NON_NULL[i], "'%s' is not supported by this server", NON_NULL[i]);
    }
    static const char *const FALSE_ONLY[] = {"logprobs", "echo", "parallel_tool_calls"};
    for (size_t i = 0; i < sizeof FALSE_ONLY / sizeof *FALSE_ONLY; i++) {
        json_t *v = json_object_get(o, FALSE_ONLY[i]);
        if (v && !json_is_null(v) && !json_is_false(v) && !(json_is_integer(v) && json_integer_value(v) == 0))
            return fail(err, 400, FALSE_ONLY[i], "'%s' is not supported by this server", FALSE_ONLY[i]);
    }
    static const char *const ZERO_ONLY[] = {"frequency_penalty", "presence_penalty"};
    for (size_t i = 0; i < sizeof ZERO_ONLY / sizeof *ZERO_ONLY; i++) {
        double x = 0;
        READ(get_number(o, ZERO_ONLY[i], &x, err));
        if (x != 0) return fail(err, 400, ZERO_ONLY[i], "'%s' is not supported by this server (only 0)", ZERO_ONLY[i]);
    }
    json_t *rf = kind == MM_OAI_IMAGES ? NULL : json_object_get(o, "response_format"); /* images: its own */
    if (rf && !json_is_null(rf)) {
        json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(t) || strcmp(json_string_value(t), "text"))
            return fail(err, 400, "response_format", "'response_format' other than {\"type\": \"text\"} is not supported");
    }
    return 0;
}

/* ---------------------------------------------------------------- sampling */

static int read_sampling(json_t *o, mm_oai_request *r, int default_max_tokens, mm_oai_error *err) {
    Metamorph__V1__SamplingParams *sp = &r->sampling;
    double x;
    long long k;
    sp->temperature = 1.0f, sp->top_p = 1.0f;
    if (get_number(o, "temperature", &x, err) == 1) sp->temperature = x < 0 || x > 1e6 ? -1.0f : (float)x;
    if (err->http_status) return err->http_status;
    if (get_number(o, "top_p", &x, err) == 1) {
        if (x <= 0 || x > 1) return fail(err, 400, "top_p", "'top_p' must be in (0, 1] (got %g)", x);
        sp->top_p = (float)x;
    }
    if (err->http_status) return err->http_status;
    if (get_int(o, "top_k", -1, INT32_MAX, &k, err) == 1) sp->top_k = k < 0 ? 0 : (int32_t)k; /* -1: off, as vLLM */
    if (err->http_status) return err->http_status;
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) seed = (uint64_t)(uintptr_t)r;
    if (get_int(o, "seed", INT64_MIN, INT64_MAX, &k, err) == 1) seed = (uint64_t)k;
    if (err->http_status) return err->http_status;
    sp->seed = seed;
    sp->max_new_tokens = default_max_tokens;
    const char *which = json_object_get(o, "max_completion_tokens") && !json_is_null(json_object_get(o, "max_completion_tokens"))
                            ? "max_completion_tokens" : "max_tokens";
    if (get_int(o, which, 1, INT32_MAX, &k, err) == 1) sp->max_new_tokens = (int32_t)k;
    if (err->http_status) return err->http_status;
    json_t *stop = json_object_get(o, "stop");
    if (stop && !json_is_null(stop)) {
        size_t n = json_is_array(stop) ? json_array_size(stop) : 1;
        if (!json_is_string(stop) && !json_is_array(stop))
            return fail(err, 400, "stop", "'stop' must be a string or an array of strings");
        r->stop = calloc(n ? n : 1, sizeof *r->stop);
        if (!r->stop) return fail(err, 500, NULL, "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *s = json_is_array(stop) ? json_array_get(stop, i) : stop;
            if (!json_is_string(s)) return fail(err, 400, "stop", "'stop[%zu]' must be a string", i);
            r->stop[i] = (char *)json_string_value(s);
        }
        sp->n_stop = n, sp->stop = r->stop;
    }
    r->g.sampling = sp;
    return 0;
}

/* Extensions for the diffusion decoder, on chat and images requests. */
static int read_image_params(json_t *o, mm_oai_request *r, const char *seed_key, mm_oai_error *err) {
    Metamorph__V1__ImageParams *ip = &r->image;
    long long k;
    double x;
    const char *s;
    if (get_int(o, "num_inference_steps", 1, INT32_MAX, &k, err) == 1) ip->steps = (int32_t)k;
    if (err->http_status) return err->http_status;
    if (get_number(o, "guidance_scale", &x, err) == 1) {
        if (x < 0 || x > 1e6) return fail(err, 400, "guidance_scale", "'guidance_scale' must be >= 0 (got %g)", x);
        ip->guidance = (float)x;
    }
    if (err->http_status) return err->http_status;
    if (get_string(o, "sampler", &s, err) == 1) ip->sampler = (char *)s;
    if (err->http_status) return err->http_status;
    if (get_int(o, seed_key, INT64_MIN, INT64_MAX, &k, err) == 1) ip->seed = (uint64_t)k;
    if (err->http_status) return err->http_status;
    r->g.image = ip;
    return 0;
}

/* ---------------------------------------------------------------- messages */

/* "data:image/png;base64,...." -> malloc'd bytes. */
static int decode_data_url(const char *url, const char *param, uint8_t **out, size_t *n_out, mm_oai_error *err) {
    if (strncmp(url, "data:", 5) != 0)
        return fail(err, 400, param,
                    "'%s': only data: URLs (data:image/png;base64,... or data:image/jpeg;base64,...) are accepted; "
                    "this server never fetches URLs", param);
    const char *comma = strchr(url, ',');
    if (!comma) return fail(err, 400, param, "'%s': a data: URL without ','", param);
    size_t head = (size_t)(comma - url);
    static const char *const TYPES[] = {"data:image/png;base64", "data:image/jpeg;base64", "data:image/jpg;base64"};
    int ok = 0;
    for (size_t i = 0; i < sizeof TYPES / sizeof *TYPES; i++) ok |= head == strlen(TYPES[i]) && !strncmp(url, TYPES[i], head);
    if (!ok)
        return fail(err, 400, param, "'%s': want a base64 PNG or JPEG data URL (data:image/png;base64,...), got \"%.40s\"",
                    param, url);
    const char *b64 = comma + 1;
    size_t n = strlen(b64), cap = n / 4 * 3 + 3, got = 0;
    uint8_t *bin = malloc(cap ? cap : 1);
    if (!bin) return fail(err, 500, NULL, "out of memory");
    const char *end = NULL;
    int rc = sodium_base642bin(bin, cap, b64, n, " \r\n\t", &got, &end, sodium_base64_VARIANT_ORIGINAL);
    if (rc != 0 || (end && *end))
        rc = sodium_base642bin(bin, cap, b64, n, " \r\n\t", &got, &end, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
    if (rc != 0 || (end && *end) || got == 0) {
        free(bin);
        return fail(err, 400, param, "'%s': the base64 data is invalid", param);
    }
    *out = bin, *n_out = got;
    return 0;
}

static int count_parts(json_t *messages, size_t *n_parts, mm_oai_error *err) {
    *n_parts = 0;
    for (size_t i = 0; i < json_array_size(messages); i++) {
        json_t *m = json_array_get(messages, i);
        if (!json_is_object(m)) return fail(err, 400, "messages", "'messages[%zu]' must be an object", i);
        json_t *c = json_object_get(m, "content");
        *n_parts += json_is_array(c) ? json_array_size(c) : 1;
    }
    return 0;
}

static int read_part(json_t *p, size_t i, size_t j, Metamorph__V1__ContentPart *out, mm_oai_error *err) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content[%zu]", i, j);
    if (json_is_string(p)) { /* a bare string in a content array: text */
        out->kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT, out->text = (char *)json_string_value(p);
        return 0;
    }
    json_t *type = json_is_object(p) ? json_object_get(p, "type") : NULL;
    if (!json_is_string(type)) return fail(err, 400, param, "'%s' must be an object with a string 'type'", param);
    const char *t = json_string_value(type);
    if (!strcmp(t, "text")) {
        json_t *text = json_object_get(p, "text");
        if (!json_is_string(text)) return fail(err, 400, param, "'%s.text' must be a string", param);
        out->kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT, out->text = (char *)json_string_value(text);
        return 0;
    }
    if (!strcmp(t, "image_url")) {
        json_t *iu = json_object_get(p, "image_url");
        json_t *url = json_is_object(iu) ? json_object_get(iu, "url") : iu;
        if (!json_is_string(url)) return fail(err, 400, param, "'%s.image_url.url' must be a string", param);
        char where[80];
        snprintf(where, sizeof where, "%s.image_url", param);
        out->kind_case = METAMORPH__V1__CONTENT_PART__KIND_IMAGE;
        return decode_data_url(json_string_value(url), where, &out->image.data, &out->image.len, err);
    }
    return fail(err, 400, param, "'%s': content part type \"%.32s\" is not supported (text, image_url)", param, t);
}

static int read_messages(json_t *messages, mm_oai_request *r, mm_oai_error *err) {
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return fail(err, 400, "messages", "'messages' must be a non-empty array");
    size_t n = json_array_size(messages);
    READ(count_parts(messages, &r->n_parts, err));
    r->msgs = calloc(n, sizeof *r->msgs);
    r->msg_ptrs = calloc(n, sizeof *r->msg_ptrs);
    r->parts = calloc(r->n_parts ? r->n_parts : 1, sizeof *r->parts);
    r->part_ptrs = calloc(r->n_parts ? r->n_parts : 1, sizeof *r->part_ptrs);
    if (!r->msgs || !r->msg_ptrs || !r->parts || !r->part_ptrs) return fail(err, 500, NULL, "out of memory");
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(messages, i);
        Metamorph__V1__ChatMessage *cm = &r->msgs[i];
        metamorph__v1__chat_message__init(cm);
        r->msg_ptrs[i] = cm;
        json_t *role = json_object_get(m, "role");
        char param[48];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!json_is_string(role)) return fail(err, 400, param, "'%s' must be a string", param);
        const char *rs = json_string_value(role);
        if (!strcmp(rs, "developer")) rs = "system"; /* OpenAI's newer name for the system role */
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))
            return fail(err, 400, param, "'%s': role \"%.32s\" is not supported (system, developer, user, assistant)",
                        param, rs);
        cm->role = (char *)rs;
        json_t *c = json_object_get(m, "content");
        cm->parts = r->part_ptrs + at;
        if (json_is_string(c) || !c || json_is_null(c)) {
            Metamorph__V1__ContentPart *p = &r->parts[at];
            metamorph__v1__content_part__init(p);
            p->kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT;
            p->text = (char *)(json_is_string(c) ? json_string_value(c) : "");
            r->part_ptrs[at++] = p, cm->n_parts = 1;
            continue;
        }
        if (!json_is_array(c)) {
            snprintf(param, sizeof param, "messages[%zu].content", i);
            return fail(err, 400, param, "'%s' must be a string or an array of content parts", param);
        }
        for (size_t j = 0; j < json_array_size(c); j++) {
            Metamorph__V1__ContentPart *p = &r->parts[at];
            metamorph__v1__content_part__init(p);
            r->part_ptrs[at++] = p, cm->n_parts++;
            READ(read_part(json_array_get(c, j), i, j, p, err));
        }
    }
    r->g.n_messages = n, r->g.messages = r->msg_ptrs;
    return 0;
}

/* One user message holding text (the completions prompt, the images prompt). */
static int single_text_message(mm_oai_request *r, const char *role, const char *text, mm_oai_error *err) {
    r->n_parts = 1;
    r->msgs = calloc(1, sizeof *r->msgs);
    r->msg_ptrs = calloc(1, sizeof *r->msg_ptrs);
    r->parts = calloc(1, sizeof *r->parts);
    r->part_ptrs = calloc(1, sizeof *r->part_ptrs);
    if (!r->msgs || !r->msg_ptrs || !r->parts || !r->part_ptrs) return fail(err, 500, NULL, "out of memory");
    metamorph__v1__chat_message__init(r->msgs);
    metamorph__v1__content_part__init(r->parts);
    r->parts->kind_case = METAMORPH__V1__CONTENT_PART__KIND_TEXT, r->parts->text = (char *)text;
    r->part_ptrs[0] = r->parts;
    r->msgs->role = (char *)role, r->msgs->n_parts = 1, r->msgs->parts = r->part_ptrs;
    r->msg_ptrs[0] = r->msgs;
    r->g.n_messages = 1, r->g.messages = r->msg_ptrs;
    return 0;
}

/* ---------------------------------------------------------------- per endpoint */

static int parse_chat(json_t *o, mm_oai_request *r, const mm_oai_limits *lim, mm_oai_error *err) {
    READ(read_messages(json_object_get(o, "messages"), r, err));
    READ(read_sampling(o, r, 0, err));
    json_t *mod = json_object_get(o, "modalities");
    if (mod && !json_is_null(mod)) {
        if (!json_is_array(mod)) return fail(err, 400, "modalities", "'modalities' must be an array of strings");
        for (size_t i = 0; i < json_array_size(mod); i++) {
            json_t *m = json_array_get(mod, i);
            const char *s = json_is_string(m) ? json_string_value(m) : "";
            if (!strcmp(s, "image")) r->g.generate_image = 1;
            else if (strcmp(s, "text"))
                return fail(err, 400, "modalities", "'modalities[%zu]' must be \"text\" or \"image\"", i);
        }
    }
    if (r->g.generate_image && !lim->image_side)
        return fail(err, 400, "modalities", "this model cannot generate images");
    READ(read_image_params(o, r, "image_seed", err));
    READ(get_bool(o, "return_token_ids", &r->return_token_ids, err));
    return 0;
}

static int parse_completion(json_t *o, mm_oai_request *r, mm_oai_error *err) {
    json_t *p = json_object_get(o, "prompt");
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0))) p = json_array_get(p, 0);
    if (!json_is_string(p))
        return fail(err, 400, "prompt", "'prompt' must be a string (or an array of one string; token-id prompts "
                    "and batches are not supported)");
    READ(single_text_message(r, "user", json_string_value(p), err));
    r->g.raw_prompt = 1;
    READ(read_sampling(o, r, COMPLETIONS_DEFAULT_MAX_TOKENS, err));
    READ(get_bool(o, "return_token_ids", &r->return_token_ids, err));
    return 0;
}

static int parse_images(json_t *o, mm_oai_request *r, const mm_oai_limits *lim, mm_oai_error *err) {
    if (!lim->image_side) return fail(err, 400, NULL, "this model cannot generate images");
    const char *prompt = NULL, *s = NULL;
    READ(get_string(o, "prompt", &prompt, err));
    if (!prompt || !prompt[0]) return fail(err, 400, "prompt", "'prompt' must be a non-empty string");
    READ(single_text_message(r, "user", prompt, err));
    r->g.generate_image = 1;
    long long n = 1;
    READ(get_int(o, "n", 1, MM_OAI_MAX_IMAGES_N, &n, err));
    r->n = (int)n;
    if (get_string(o, "size", &s, err) == 1 && strcmp(s, "auto")) {
        char want[32];
        snprintf(want, sizeof want, "%dx%d", lim->image_side, lim->image_side);
        if (strcmp(s, want))
            return fail(err, 400, "size", "'size' \"%.32s\" is not supported: this model draws %s (or say \"auto\")", s,
                        want);
    }
    if (err->http_status) return err->http_status;
    if (get_string(o, "response_format", &s, err) == 1 && strcmp(s, "b64_json"))
        return fail(err, 400, "response_format",
                    "'response_format' \"%.32s\" is not supported: images come back inline as \"b64_json\"", s);
    if (err->http_status) return err->http_status;
    /* greedy text (the visual tokens are a regression, not sampled); the image stops the request */
    r->sampling.temperature = 0, r->sampling.top_p = 1;
    r->sampling.max_new_tokens = lim->image_tokens;
    r->g.sampling = &r->sampling;
    READ(read_image_params(o, r, "seed", err));
    r->image_seed = r->image.seed;
    return 0;
}

int mm_oai_request_parse(mm_oai_kind kind, const char *body, size_t len, const mm_oai_limits *lim,
                         mm_oai_request **out, mm_oai_error *err) {
    memset(err, 0, sizeof *err);
    *out = NULL;
    mm_oai_request *r = calloc(1, sizeof *r);
    if (!r) return fail(err, 500, NULL, "out of memory");
    r->kind = kind, r->n = 1, r->model = "";
    metamorph__v1__generate_request__init(&r->g);
    metamorph__v1__sampling_params__init(&r->sampling);
    metamorph__v1__image_params__init(&r->image);
    json_error_t je;
    r->root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    int rc = 0;
    if (!r->root) {
        rc = fail(err, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        goto out;
    }
    json_t *o = r->root;
    if (!json_is_object(o)) {
        rc = fail(err, 400, NULL, "the body must be a JSON object");
        goto out;
    }
    const char *model = NULL;
    if ((rc = get_string(o, "model", &model, err)) > 1) goto out;
    rc = 0;
    if (model) {
        r->model = model;
        if (strcmp(model, lim->model_name)) {
            rc = fail(err, 404, "model", "The model '%.200s' does not exist (this server serves '%.200s')", model,
                      lim->model_name);
            goto out;
        }
    }
    if ((rc = refuse_unsupported(o, kind, err))) goto out;
    long long n = 1;
    if (kind != MM_OAI_IMAGES) {
        if ((rc = get_int(o, "n", 1, 1, &n, err)) > 1) goto out;
        rc = 0;
        if ((rc = get_bool(o, "stream", &r->stream, err)) > 1) goto out;
        rc = 0;
        json_t *so = json_object_get(o, "stream_options");
        if (so && !json_is_null(so)) {
            if (!json_is_object(so)) {
                rc = fail(err, 400, "stream_options", "'stream_options' must be an object");
                goto out;
            }
            if ((rc = get_bool(so, "include_usage", &r->include_usage, err)) > 1) goto out;
            rc = 0;
        }
    }
    double timeout = 0;
    if ((rc = get_number(o, "timeout", &timeout, err)) > 1) goto out;
    rc = 0;
    if (timeout < 0) {
        rc = fail(err, 400, "timeout", "'timeout' must be a positive number of seconds");
        goto out;
    }
    r->timeout_s = timeout;
    rc = kind == MM_OAI_CHAT ? parse_chat(o, r, lim, err)
       : kind == MM_OAI_COMPLETION ? parse_completion(o, r, err)
                                  : parse_images(o, r, lim, err);
out:
    if (rc) {
        if (!err->http_status) fail(err, rc, NULL, "invalid request");
        mm_oai_request_free(r);
        return err->http_status;
    }
    *out = r;
    return 0;
}

void mm_oai_request_free(mm_oai_request *r) {
    if (!r) return;
    for (size_t i = 0; r->parts && i < r->n_parts; i++)
        if (r->parts[i].kind_case == METAMORPH__V1__CONTENT_PART__KIND_IMAGE) free(r->parts[i].image.data);
    free(r->parts);
    free(r->part_ptrs);
    free(r->msgs);
    free(r->msg_ptrs);
    free(r->stop);
    if (r->root) json_decref(r->root);
    free(r);
}
