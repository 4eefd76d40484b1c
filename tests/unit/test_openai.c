/* The OpenAI door's JSON handling alone (coordinator/openai_request.c, openai_response.c),
 * also built under AddressSanitizer: well-formed requests become the GenerateRequest a
 * gRPC client would send; hostile bodies (malformed JSON, wrong types, huge numbers,
 * deep nesting, bad base64, a 50 MB body) are refused with the right status and field,
 * never a crash or a leak. */
#include <grpc/status.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/openai_request.h"
#include "coordinator/openai_response.h"
#include "tests/testutil.h"

static const mm_oai_limits LIM = {"tiny", 64, 64};

/* Parses body; returns the HTTP status (0 = accepted) and frees everything unless keep. */
static int parse(mm_oai_kind kind, const char *body, mm_oai_request **keep, mm_oai_error *err) {
    mm_oai_request *r = NULL;
    int st = mm_oai_request_parse(kind, body, strlen(body), &LIM, &r, err);
    EXPECT((st == 0) == (r != NULL), "status %d with request %p", st, (void *)r);
    if (keep) *keep = r;
    else mm_oai_request_free(r);
    return st;
}

static void expect_refused(mm_oai_kind kind, const char *body, int status, const char *param) {
    mm_oai_error err;
    int st = parse(kind, body, NULL, &err);
    EXPECT(st == status, "%.80s: status %d, want %d (%s)", body, st, status, err.message);
    if (param) EXPECT(!strcmp(err.param, param), "%.80s: param \"%s\", want \"%s\"", body, err.param, param);
    EXPECT(st == 0 || err.message[0], "%.80s: no message", body);
}

static void test_chat_mapping(void) {
    mm_oai_request *r;
    mm_oai_error err;
    const char *body =
        "{\"model\": \"tiny\", \"messages\": [{\"role\": \"developer\", \"content\": \"Be brief.\"},"
        " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"What is this?\"},"
        " {\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,iVBORw0KGgo=\"}}]}],"
        " \"max_completion_tokens\": 7, \"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": 20, \"seed\": -3,"
        " \"stop\": [\"a\", \"bc\"], \"stream\": true, \"stream_options\": {\"include_usage\": true}, \"n\": 1,"
        " \"modalities\": [\"text\", \"image\"], \"num_inference_steps\": 9, \"guidance_scale\": 6.5,"
        " \"sampler\": \"ddim\", \"image_seed\": 11, \"return_token_ids\": true, \"timeout\": 2.5,"
        " \"frequency_penalty\": 0, \"user\": \"someone\"}";
    EXPECT(parse(MM_OAI_CHAT, body, &r, &err) == 0, "chat refused: %s", err.message);
    if (!r) return;
    const Metamorph__V1__GenerateRequest *g = &r->g;
    EXPECT(g->n_messages == 2 && !strcmp(g->messages[0]->role, "system") && !strcmp(g->messages[1]->role, "user"),
           "roles");
    EXPECT(g->messages[0]->n_parts == 1 && !strcmp(g->messages[0]->parts[0]->text, "Be brief."), "system text");
    EXPECT(g->messages[1]->n_parts == 2 &&
               g->messages[1]->parts[1]->kind_case == METAMORPH__V1__CONTENT_PART__KIND_IMAGE &&
               g->messages[1]->parts[1]->image.len == 8 && !memcmp(g->messages[1]->parts[1]->image.data, "\x89PNG\r\n\x1a\n", 8),
           "image part: the data URL's 8 bytes");
    EXPECT(g->sampling && g->sampling->max_new_tokens == 7 && g->sampling->temperature == 0.5f &&
               g->sampling->top_p == 0.9f && g->sampling->top_k == 20 && g->sampling->seed == (uint64_t)-3,
           "sampling");
    EXPECT(g->sampling->n_stop == 2 && !strcmp(g->sampling->stop[1], "bc"), "stop");
    EXPECT(g->generate_image && !g->raw_prompt, "modalities image -> generate_image");
    EXPECT(g->image && g->image->steps == 9 && g->image->guidance == 6.5f && !strcmp(g->image->sampler, "ddim") &&
               g->image->seed == 11,
           "image params");
    EXPECT(r->stream && r->include_usage && r->return_token_ids && r->timeout_s == 2.5, "http options");
    mm_oai_request_free(r);

    /* OpenAI's defaults: temperature 1, a seed of the server's, max tokens the server's */
    EXPECT(parse(MM_OAI_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", &r, &err) == 0, "minimal");
    if (r) {
        EXPECT(r->g.sampling->temperature == 1.0f && r->g.sampling->top_p == 1.0f && r->g.sampling->max_new_tokens == 0 &&
                   !r->g.generate_image && !r->stream,
               "defaults");
        mm_oai_request_free(r);
    }
}

static void test_completion_and_images(void) {
    mm_oai_request *r;
    mm_oai_error err;
    EXPECT(parse(MM_OAI_COMPLETION, "{\"prompt\": [\"Once\"], \"max_tokens\": 3}", &r, &err) == 0, "completion");
    if (r) {
        EXPECT(r->g.raw_prompt && r->g.n_messages == 1 && !strcmp(r->g.messages[0]->parts[0]->text, "Once") &&
                   r->g.sampling->max_new_tokens == 3,
               "completion mapping");
        mm_oai_request_free(r);
    }
    EXPECT(parse(MM_OAI_COMPLETION, "{\"prompt\": \"x\"}", &r, &err) == 0, "completion default");
    if (r) EXPECT(r->g.sampling->max_new_tokens == 16, "completions default max_tokens 16, as OpenAI");
    mm_oai_request_free(r);
    EXPECT(parse(MM_OAI_IMAGES, "{\"prompt\": \"a cat\", \"n\": 3, \"size\": \"64x64\", \"response_format\": \"b64_json\","
                                " \"seed\": 40, \"num_inference_steps\": 4}",
                 &r, &err) == 0,
           "images: %s", err.message);
    if (r) {
        EXPECT(r->n == 3 && r->image_seed == 40 && r->g.generate_image && r->g.sampling->temperature == 0 &&
                   r->g.sampling->max_new_tokens == 64 && r->g.image->steps == 4,
               "images mapping");
        mm_oai_request_free(r);
    }
    expect_refused(MM_OAI_IMAGES, "{\"prompt\": \"a\", \"size\": \"512x512\"}", 400, "size");
    expect_refused(MM_OAI_IMAGES, "{\"prompt\": \"a\", \"response_format\": \"url\"}", 400, "response_format");
    expect_refused(MM_OAI_IMAGES, "{\"prompt\": \"a\", \"n\": 9}", 400, "n");
    expect_refused(MM_OAI_IMAGES, "{\"prompt\": \"\"}", 400, "prompt");
    expect_refused(MM_OAI_COMPLETION, "{\"prompt\": [1, 2, 3]}", 400, "prompt");
}

static void test_refusals(void) {
    expect_refused(MM_OAI_CHAT, "", 400, "");
    expect_refused(MM_OAI_CHAT, "{\"messages\": [", 400, "");
    expect_refused(MM_OAI_CHAT, "[1, 2]", 400, "");
    expect_refused(MM_OAI_CHAT, "{\"a\": 1, \"a\": 2}", 400, "");
    expect_refused(MM_OAI_CHAT, "{\"model\": \"gpt-4\", \"messages\": []}", 404, "model");
    expect_refused(MM_OAI_CHAT, "{\"messages\": []}", 400, "messages");
    expect_refused(MM_OAI_CHAT, "{\"messages\": \"hi\"}", 400, "messages");
    expect_refused(MM_OAI_CHAT, "{\"messages\": [3]}", 400, "messages");
    expect_refused(MM_OAI_CHAT, "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", 400, "messages[0].role");
    expect_refused(MM_OAI_CHAT, "{\"messages\": [{\"role\": 7, \"content\": \"x\"}]}", 400, "messages[0].role");
    expect_refused(MM_OAI_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": 7}]}", 400, "messages[0].content");
    expect_refused(MM_OAI_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"audio\"}]}]}", 400,
                   "messages[0].content[0]");
    const char *msg = "\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]";
    char body[512];
    static const struct {
        const char *field, *param;
        int status;
    } BAD[] = {
        {"\"temperature\": \"hot\"", "temperature", 400},
        {"\"top_p\": 0", "top_p", 400},
        {"\"top_p\": 1.5", "top_p", 400},
        {"\"max_tokens\": 0", "max_tokens", 400},
        {"\"max_tokens\": 1e400", "", 400},                       /* not JSON jansson can hold */
        {"\"max_tokens\": 99999999999999999999999", "", 400},     /* integer overflow in the parser */
        {"\"max_tokens\": 4294967296", "max_tokens", 400},        /* above int32, no silent wrap */
        {"\"max_tokens\": 2.5", "max_tokens", 400},
        {"\"seed\": \"1\"", "seed", 400},
        {"\"n\": 2", "n", 400},
        {"\"stream\": 1", "stream", 400},
        {"\"stream_options\": 3", "stream_options", 400},
        {"\"stop\": 5", "stop", 400},
        {"\"stop\": [\"a\", 5]", "stop", 400},
        {"\"modalities\": [\"audio\"]", "modalities", 400},
        {"\"tools\": [{\"type\": \"function\"}]", "tools", 400},
        {"\"logprobs\": true", "logprobs", 400},
        {"\"presence_penalty\": 0.5", "presence_penalty", 400},
        {"\"response_format\": {\"type\": \"json_object\"}", "response_format", 400},
        {"\"timeout\": -1", "timeout", 400},
        {"\"guidance_scale\": -2", "guidance_scale", 400},
        {"\"num_inference_steps\": 0", "num_inference_steps", 400},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        snprintf(body, sizeof body, "{%s, %s}", msg, BAD[i].field);
        expect_refused(MM_OAI_CHAT, body, BAD[i].status, BAD[i].param);
    }
    /* image URLs: only base64 PNG/JPEG data URLs, never fetched */
    static const char *const URLS[] = {"http://example.com/cat.png", "file:///etc/passwd", "data:image/gif;base64,R0lG",
                                       "data:image/png;base64,!!!notbase64", "data:image/png;base64,", "data:image/png",
                                       "data:image/png;base64,iVBORw0KGgo=x"};
    for (size_t i = 0; i < sizeof URLS / sizeof *URLS; i++) {
        snprintf(body, sizeof body,
                 "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": "
                 "\"%s\"}}]}]}",
                 URLS[i]);
        expect_refused(MM_OAI_CHAT, body, 400, "messages[0].content[0].image_url");
    }
    /* deep nesting: the parser stops, nothing overflows */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 64);
    if (deep) {
        size_t n = (size_t)sprintf(deep, "{\"messages\": ");
        for (size_t i = 0; i < depth; i++) deep[n++] = '[';
        for (size_t i = 0; i < depth; i++) deep[n++] = ']';
        deep[n++] = '}', deep[n] = 0;
        expect_refused(MM_OAI_CHAT, deep, 400, "");
        free(deep);
    }
}

/* A 50 MB body: a 38 MB image in a data URL is decoded whole; the same with one bad
 * character in the middle is refused. */
static void test_big_body(void) {
    size_t raw = 38u << 20, b64 = sodium_base64_ENCODED_LEN(raw, sodium_base64_VARIANT_ORIGINAL);
    uint8_t *bytes = malloc(raw);
    char *body = malloc(b64 + 256);
    EXPECT(bytes && body, "memory");
    if (!bytes || !body) return;
    for (size_t i = 0; i < raw; i++) bytes[i] = (uint8_t)(i * 2654435761u >> 13);
    size_t n = (size_t)sprintf(body, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", "
                                     "\"image_url\": {\"url\": \"data:image/jpeg;base64,");
    sodium_bin2base64(body + n, b64, bytes, raw, sodium_base64_VARIANT_ORIGINAL);
    size_t mid = n + b64 / 2;
    n += strlen(body + n);
    strcpy(body + n, "\"}}]}]}");
    EXPECT(strlen(body) > (50u << 20), "the body is over 50 MB");
    mm_oai_request *r;
    mm_oai_error err;
    EXPECT(parse(MM_OAI_CHAT, body, &r, &err) == 0, "50 MB body refused: %s", err.message);
    if (r) {
        const Metamorph__V1__ContentPart *p = r->g.messages[0]->parts[0];
        EXPECT(p->image.len == raw && !memcmp(p->image.data, bytes, raw), "the image survives the round trip");
        mm_oai_request_free(r);
    }
    body[mid] = '*';
    expect_refused(MM_OAI_CHAT, body, 400, "messages[0].content[0].image_url");
    free(body);
    free(bytes);
}

/* Replies -> OpenAI objects: text and images in the order the model wrote them. */
static void test_responses(void) {
    mm_oai_result res;
    mm_oai_result_init(&res);
    int32_t ids1[] = {5, 6}, ids2[] = {-1}, ids3[] = {9};
    uint8_t png[] = {0x89, 'P', 'N', 'G'};
    mm_reply d1 = {.type = MM_REPLY_DELTA, .text = "Here ", .text_len = 5, .ids = ids1, .n_ids = 2};
    mm_reply st = {.type = MM_REPLY_IMAGE_STARTED, .image_index = 0};
    mm_reply v = {.type = MM_REPLY_DELTA, .text = "", .text_len = 0, .ids = ids2, .n_ids = 1};
    mm_reply d2 = {.type = MM_REPLY_DELTA, .text = "done", .text_len = 4, .ids = ids3, .n_ids = 1};
    mm_reply im = {.type = MM_REPLY_IMAGE_READY, .image_index = 0, .png = png, .n_png = sizeof png};
    mm_reply fin = {.type = MM_REPLY_FINAL, .finish_reason = "stop_string", .prompt_tokens = 10, .completion_tokens = 4,
                   .cached_tokens = 8};
    const mm_reply *seq[] = {&d1, &st, &v, &d2, &im}; /* the PNG arrives after the text that follows it */
    for (size_t i = 0; i < 5; i++) EXPECT(mm_oai_result_add(&res, seq[i]) == 0, "add %zu", i);
    mm_oai_head h = {"chatcmpl-x", "tiny", 1700000000};
    json_t *j = mm_oai_completion_json(MM_OAI_CHAT, &h, &res, &fin, 1);
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    const char *want =
        "{\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"logprobs\":null,\"message\":{\"content\":["
        "{\"text\":\"Here \",\"type\":\"text\"},{\"image_url\":{\"url\":\"data:image/png;base64,iVBORw==\"},"
        "\"type\":\"image_url\"},{\"text\":\"done\",\"type\":\"text\"}],\"role\":\"assistant\"},\"token_ids\":[5,6,-1,9]}],"
        "\"created\":1700000000,\"id\":\"chatcmpl-x\",\"model\":\"tiny\",\"object\":\"chat.completion\","
        "\"usage\":{\"completion_tokens\":4,\"prompt_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":8},"
        "\"total_tokens\":14}}";
    EXPECT(text && !strcmp(text, want), "chat response:\n got %s\nwant %s", text ? text : "(null)", want);
    free(text);
    json_decref(j);
    mm_oai_result_free(&res);

    /* text only: content stays a string; completions: text */
    mm_oai_result_init(&res);
    EXPECT(mm_oai_result_add(&res, &d2) == 0, "add");
    j = mm_oai_completion_json(MM_OAI_CHAT, &h, &res, &fin, 0);
    EXPECT(j && json_is_string(json_object_get(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"),
                                               "content")),
           "text-only content is a string");
    json_decref(j);
    j = mm_oai_completion_json(MM_OAI_COMPLETION, &h, &res, &fin, 0);
    EXPECT(j && !strcmp(json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")), "done"),
           "completion text");
    json_decref(j);
    mm_oai_result_free(&res);

    mm_oai_error e;
    static const struct {
        int grpc, http;
    } MAP[] = {{GRPC_STATUS_INVALID_ARGUMENT, 400}, {GRPC_STATUS_UNIMPLEMENTED, 400}, {GRPC_STATUS_RESOURCE_EXHAUSTED, 429},
               {GRPC_STATUS_UNAVAILABLE, 503},     {GRPC_STATUS_DEADLINE_EXCEEDED, 504}, {GRPC_STATUS_INTERNAL, 500},
               {GRPC_STATUS_UNAUTHENTICATED, 401}};
    for (size_t i = 0; i < sizeof MAP / sizeof *MAP; i++) {
        mm_oai_error_from_grpc(MAP[i].grpc, "why", &e);
        EXPECT(e.http_status == MAP[i].http && !strcmp(e.message, "why"), "grpc %d -> http %d, want %d", MAP[i].grpc,
               e.http_status, MAP[i].http);
    }
    j = mm_oai_error_json(&e);
    text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    EXPECT(text && !strcmp(text, "{\"error\":{\"code\":401,\"message\":\"why\",\"param\":null,\"type\":\"authentication_error\"}}"),
           "error shape: %s", text ? text : "(null)");
    free(text);
    json_decref(j);
}

int main(void) {
    if (sodium_init() < 0) return 1;
    test_chat_mapping();
    test_completion_and_images();
    test_refusals();
    test_big_body();
    test_responses();
    return mm_test_finish("test_openai");
}
