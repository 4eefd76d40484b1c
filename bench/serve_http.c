/* See serve_http.h. One libcurl easy handle per call (the slot threads keep nothing);
 * the body is parsed as it arrives: "data: {...}\n\n" events, each chunk's token_ids
 * (asked for with return_token_ids) counted as the gRPC client counts TextDelta ids. */
#include "serve_http.h"

#include <curl/curl.h>
#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    serve_req *r;
    char *buf;                /* [len] bytes not yet split into events */
    size_t len, cap;
    int done, error;
} sse_state;

static void on_event_json(sse_state *s, const char *data) {
    serve_req *r = s->r;
    if (!strcmp(data, "[DONE]")) {
        s->done = 1;
        return;
    }
    json_t *j = json_loads(data, 0, NULL);
    if (!j) {
        s->error = 1;
        return;
    }
    double t = serve_now();
    if (json_object_get(j, "error")) s->error = 1;
    json_t *usage = json_object_get(j, "usage");
    if (json_is_object(usage)) r->n_in = (int)json_integer_value(json_object_get(usage, "prompt_tokens"));
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    size_t n_ids = json_array_size(json_object_get(choice, "token_ids"));
    if (n_ids) {
        if (r->n_out == 0) r->first = t;
        else if (r->n_itl < r->cap_itl) r->itl[r->n_itl++] = (t - r->last) * 1e3;
        r->last = t;
        r->n_out += (int)n_ids;
    }
    json_t *content = json_object_get(json_object_get(choice, "delta"), "content");
    if (json_is_array(content)) r->n_images += (int)json_array_size(content);
    json_decref(j);
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *user) {
    sse_state *s = user;
    size_t n = size * nmemb;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 65536;
        while (cap < s->len + n + 1) cap *= 2;
        char *b = realloc(s->buf, cap);
        if (!b) return 0; /* aborts the transfer */
        s->buf = b, s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = 0;
    char *start = s->buf, *end;
    while ((end = strstr(start, "\n\n"))) {
        *end = 0;
        if (!strncmp(start, "data: ", 6)) on_event_json(s, start + 6);
        start = end + 2;
    }
    s->len -= (size_t)(start - s->buf);
    memmove(s->buf, start, s->len + 1);
    return n;
}

/* The JSON body: the prompt (after the image for SERVE_UNDERSTAND), greedy as gRPC's default. */
static char *request_body(const serve_req *r, const char *prompt, int index) {
    json_t *content = json_array();
    if (r->kind == SERVE_UNDERSTAND && r->image) {
        size_t cap = sodium_base64_ENCODED_LEN(r->image->len, sodium_base64_VARIANT_ORIGINAL);
        char *url = malloc(cap + 32);
        if (url) {
            strcpy(url, "data:image/png;base64,");
            sodium_bin2base64(url + strlen(url), cap, r->image->png, r->image->len, sodium_base64_VARIANT_ORIGINAL);
            json_array_append_new(content, json_pack("{s:s, s:{s:s}}", "type", "image_url", "image_url", "url", url));
        }
        free(url);
    }
    json_array_append_new(content, json_pack("{s:s, s:s}", "type", "text", "text", prompt));
    json_t *body = json_pack("{s:[{s:s, s:o}], s:i, s:f, s:b, s:{s:b}, s:b}", "messages", "role", "user", "content",
                             content, "max_tokens", r->out_len, "temperature", 0.0, "stream", 1, "stream_options",
                             "include_usage", 1, "return_token_ids", 1);
    if (body && r->kind == SERVE_GENERATE) {
        json_object_set_new(body, "modalities", json_pack("[s, s]", "text", "image"));
        json_object_set_new(body, "image_seed", json_integer(index));
        if (r->steps) json_object_set_new(body, "num_inference_steps", json_integer(r->steps));
    }
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    return text;
}

int serve_http_call(const char *hostport, serve_req *r, const char *prompt, int index, double timeout_s) {
    char *body = request_body(r, prompt, index);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    sse_state s = {r, NULL, 0, 0, 0, 0};
    char url[320];
    snprintf(url, sizeof url, "http://%s/v1/chat/completions", hostport);
    long status = -1;
    if (body && c && h) {
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1e3));
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_slist_free_all(h);
    if (c) curl_easy_cleanup(c);
    free(body);
    free(s.buf);
    if (status == 200 && s.done && !s.error) return 0;
    return status > 0 && status != 200 ? (int)status : -1;
}
