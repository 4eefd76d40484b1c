/* See openai_response.h. */
#include "openai_response.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

void mm_oai_result_init(mm_oai_result *res) {
    memset(res, 0, sizeof *res);
    res->parts = json_array();
    res->images = json_array();
}

void mm_oai_result_free(mm_oai_result *res) {
    free(res->text);
    free(res->ids);
    free(res->slots);
    json_decref(res->parts);
    json_decref(res->images);
    memset(res, 0, sizeof *res);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q, *cap = c;
    return 0;
}

/* The text written since the last image, as a content part (none when empty). */
static int close_segment(mm_oai_result *res) {
    if (res->len == res->segment) return 0;
    json_t *part = json_pack("{s:s, s:s%}", "type", "text", "text", res->text + res->segment, res->len - res->segment);
    if (!part || json_array_append_new(res->parts, part)) return -1;
    res->segment = res->len;
    return 0;
}

#define DATA_URL_PREFIX "data:image/png;base64,"

/* "data:image/png;base64,<png in base64>", malloc'd; the base64 alone starts at
 * + strlen(DATA_URL_PREFIX), so both response shapes share one encoding. */
static char *png_data_url(const uint8_t *png, size_t n) {
    size_t pre = strlen(DATA_URL_PREFIX), cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *url = malloc(pre + cap);
    if (!url) return NULL;
    memcpy(url, DATA_URL_PREFIX, pre);
    sodium_bin2base64(url + pre, cap, png, n, sodium_base64_VARIANT_ORIGINAL);
    return url;
}

static json_t *image_part_of_url(const char *url) {
    return json_pack("{s:s, s:{s:s}}", "type", "image_url", "image_url", "url", url);
}

json_t *mm_oai_image_part(const uint8_t *png, size_t n) {
    char *url = png_data_url(png, n);
    json_t *part = url ? image_part_of_url(url) : NULL;
    free(url);
    return part;
}

int mm_oai_result_add(mm_oai_result *res, const mm_reply *r) {
    if (r->type == MM_REPLY_DELTA) {
        if (grow((void **)&res->text, &res->cap, res->len + r->text_len + 1, 1) ||
            grow((void **)&res->ids, &res->cap_ids, res->n_ids + (size_t)r->n_ids, sizeof *res->ids))
            return -1;
        if (r->text_len) memcpy(res->text + res->len, r->text, r->text_len);
        res->len += r->text_len;
        res->text[res->len] = 0;
        if (r->n_ids) memcpy(res->ids + res->n_ids, r->ids, (size_t)r->n_ids * sizeof *r->ids);
        res->n_ids += (size_t)r->n_ids;
        return 0;
    }
    if (r->type == MM_REPLY_IMAGE_STARTED) {
        if (r->image_index != res->n_slots) return 0; /* images start in order; a repeat changes nothing */
        if (close_segment(res)) return -1;
        size_t *g = realloc(res->slots, (size_t)(res->n_slots + 1) * sizeof *g);
        if (!g) return -1;
        res->slots = g;
        res->slots[res->n_slots++] = json_array_size(res->parts);
        return json_array_append_new(res->parts, json_null()) ? -1 : 0;
    }
    if (r->type != MM_REPLY_IMAGE_READY) return 0;
    res->n_images++;
    if (!r->png) return 0; /* no decoder pool: visual tokens only, nothing to show */
    char *url = png_data_url(r->png, r->n_png); /* one encoding for both shapes */
    json_t *part = url ? image_part_of_url(url) : NULL;
    json_t *img = url ? json_pack("{s:s}", "b64_json", url + strlen(DATA_URL_PREFIX)) : NULL;
    free(url);
    if (!part || !img || json_array_append_new(res->images, img)) {
        json_decref(part);
        if (!part) json_decref(img);
        return -1;
    }
    if (r->image_index >= 0 && r->image_index < res->n_slots)
        return json_array_set_new(res->parts, res->slots[r->image_index], part) ? -1 : 0;
    return close_segment(res) || json_array_append_new(res->parts, part) ? -1 : 0;
}

const char *mm_oai_finish_reason(const char *ours) {
    return ours && !strcmp(ours, "length") ? "length" : "stop"; /* "stop", "stop_string": "stop" */
}

json_t *mm_oai_usage(const mm_reply *f) {
    /* prompt_tokens_details.cached_tokens: OpenAI's name for prompt tokens served from cache */
    return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", f->prompt_tokens, "completion_tokens",
                     f->completion_tokens, "total_tokens", f->prompt_tokens + f->completion_tokens,
                     "prompt_tokens_details", "cached_tokens", f->cached_tokens);
}

static json_t *ids_json(const mm_oai_result *res) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < res->n_ids; i++)
        if (json_array_append_new(a, json_integer(res->ids[i]))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* Text alone as a string (what every client expects); with images, the parts in order. */
static json_t *message_content(const mm_oai_result *res) {
    if (json_array_size(res->parts) == 0) return json_stringn(res->text ? res->text : "", res->len);
    json_t *parts = json_array();
    size_t i;
    json_t *p;
    json_array_foreach(res->parts, i, p) /* images that never came (no decoder) leave no part */
        if (!json_is_null(p) && json_array_append(parts, p)) goto oom;
    if (res->len > res->segment &&
        json_array_append_new(parts, json_pack("{s:s, s:s%}", "type", "text", "text", res->text + res->segment,
                                               res->len - res->segment)))
        goto oom;
    return parts;
oom:
    json_decref(parts);
    return NULL;
}

json_t *mm_oai_completion_json(mm_oai_kind kind, const mm_oai_head *h, const mm_oai_result *res, const mm_reply *final,
                               int return_token_ids) {
    json_t *choice;
    if (kind == MM_OAI_CHAT)
        choice = json_pack("{s:i, s:{s:s, s:o}, s:n, s:s}", "index", 0, "message", "role", "assistant", "content",
                           message_content(res), "logprobs", "finish_reason", mm_oai_finish_reason(final->finish_reason));
    else
        choice = json_pack("{s:i, s:s%, s:n, s:s}", "index", 0, "text", res->text ? res->text : "", res->len, "logprobs",
                           "finish_reason", mm_oai_finish_reason(final->finish_reason));
    if (choice && return_token_ids) json_object_set_new(choice, "token_ids", ids_json(res));
    return json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", h->id, "object",
                     kind == MM_OAI_CHAT ? "chat.completion" : "text_completion", "created", (json_int_t)h->created,
                     "model", h->model, "choices", choice, "usage", mm_oai_usage(final));
}

json_t *mm_oai_chunk_json(mm_oai_kind kind, const mm_oai_head *h, json_t *delta, const char *text,
                          const char *finish_reason) {
    json_t *choice;
    if (kind == MM_OAI_CHAT)
        choice = json_pack("{s:i, s:o, s:n, s:s?}", "index", 0, "delta", delta ? delta : json_object(), "logprobs",
                           "finish_reason", finish_reason);
    else
        choice = json_pack("{s:i, s:s, s:n, s:s?}", "index", 0, "text", text ? text : "", "logprobs", "finish_reason",
                           finish_reason);
    return json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", h->id, "object",
                     kind == MM_OAI_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)h->created, "model", h->model, "choices", choice);
}

json_t *mm_oai_usage_chunk_json(mm_oai_kind kind, const mm_oai_head *h, const mm_reply *final) {
    return json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", h->id, "object",
                     kind == MM_OAI_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)h->created, "model", h->model, "choices", "usage", mm_oai_usage(final));
}

json_t *mm_oai_error_json(const mm_oai_error *e) {
    return json_pack("{s:{s:s, s:s, s:s?, s:i}}", "error", "message", e->message, "type", e->type ? e->type : "error",
                     "param", e->param[0] ? e->param : NULL, "code", e->http_status);
}

json_t *mm_oai_models_json(const char *model, long long created, int32_t max_model_len) {
    return json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i}]}", "object", "list", "data", "id", model, "object", "model",
                     "created", (json_int_t)created, "owned_by", "metamorph", "max_model_len", max_model_len);
}
