/* The vision tower's configs: SigLIP's config.json and preprocessor_config.json, and the
 * MetaMorph fields that choose its features (mm_vision_select_layer / _feature), read
 * by the one loader every entry point uses (mm_vision_tower_load). Refusals name the
 * file, the key and the value; accepted values pick the hidden state the reference's
 * SiglipVisionTower.feature_select picks. Each case edits a copy of assets/tiny's llm/
 * and vision/ in a temporary directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/vision_tower.h"
#include "tests/testutil.h"

static char tmp[] = "/tmp/mm_vision_malformed_XXXXXX";
static mm_backend *be;

static void run(const char *cmd) { EXPECT(system(cmd) == 0, "%s", cmd); }

/* A fresh model root: llm/ and vision/ copied, no decoder. */
static void fresh_root(void) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s/root' && mkdir '%s/root' && cp -r '%s' '%s' '%s/root/' && "
             "printf '{\"format\": \"metamorph\", \"version\": 1, \"llm\": \"llm\", \"vision\": \"vision\", "
             "\"decoder\": null}' > '%s/root/metamorph.json'",
             tmp, tmp, mm_asset_path("tiny/llm"), mm_asset_path("tiny/vision"), tmp, tmp);
    run(cmd);
}

/* Replaces the first `from` by `to` in root/rel. */
static void edit(const char *rel, const char *from, const char *to) {
    char path[600];
    snprintf(path, sizeof path, "%s/root/%s", tmp, rel);
    size_t n = 0;
    char *text = mm_test_read_file(path, &n);
    char *at = text ? strstr(text, from) : NULL;
    EXPECT(at != NULL, "'%s' in %s", from, path);
    FILE *f = at ? fopen(path, "wb") : NULL;
    if (f) {
        fwrite(text, 1, (size_t)(at - text), f);
        fputs(to, f);
        fputs(at + strlen(from), f);
        fclose(f);
    }
    free(text);
}

static mm_status load(const char *rel, mm_vision_tower *vt) {
    char dir[600];
    snprintf(dir, sizeof dir, "%s/%s", tmp, rel);
    return mm_vision_tower_load(dir, be, vt);
}

/* Refused, the message naming the file (file_needle) and the key and value (needle). */
static void expect_refused(const char *rel, const char *from, const char *to, const char *needle) {
    fresh_root();
    edit(rel, from, to);
    mm_vision_tower vt;
    mm_status s = load("root", &vt);
    EXPECT(s != MM_OK && vt.sig == NULL, "%s: loaded", to);
    EXPECT(strstr(mm_error_last(), needle) && strstr(mm_error_last(), rel), "%s: message '%s' lacks '%s' or '%s'", to,
           mm_error_last(), needle, rel);
}

/* Accepted: the features are hidden_states[select] of the 2-layer tower. */
static void expect_layer(const char *select_text, int32_t select, int32_t run_layers) {
    fresh_root();
    char to[64];
    snprintf(to, sizeof to, "\"mm_vision_select_layer\": %s", select_text);
    edit("llm/config.json", "\"mm_vision_select_layer\": -1", to);
    mm_vision_tower vt;
    EXPECT(load("root", &vt) == MM_OK, "%s: %s", to, mm_error_last());
    EXPECT(vt.select_layer == select && vt.sig && vt.sig->run_layers == run_layers && vt.n_tokens == 64,
           "%s: layer %d, runs %d", to, vt.select_layer, vt.sig ? vt.sig->run_layers : -1);
    mm_vision_tower_free(&vt);
}

int main(void) {
    if (!mkdtemp(tmp) || mm_backend_init("cpu", 1, &be) != MM_OK) return 2;
    /* the embedded model says -1; the reference's default (no key) is -2 */
    expect_layer("-1", -1, 2);
    expect_layer("-2", -2, 1);
    expect_layer("-3", -3, 0);
    expect_layer("0", 0, 0);
    expect_layer("1", 1, 1);
    expect_layer("2", 2, 2);
    expect_layer("null", -2, 1);
    /* a SigLIP directory alone: its last hidden state, 64 tokens */
    mm_vision_tower vt;
    fresh_root();
    EXPECT(load("root/vision", &vt) == MM_OK && vt.select_layer == -1 && vt.sig->run_layers == 2 && vt.n_tokens == 64,
           "bare SigLIP: %s", mm_error_last());
    mm_vision_tower_free(&vt);

    expect_refused("llm/config.json", "\"mm_vision_select_layer\": -1", "\"mm_vision_select_layer\": 3",
                   "'mm_vision_select_layer' = 3");
    expect_refused("llm/config.json", "\"mm_vision_select_layer\": -1", "\"mm_vision_select_layer\": -4",
                   "'mm_vision_select_layer' = -4");
    expect_refused("llm/config.json", "\"mm_vision_select_layer\": -1", "\"mm_vision_select_layer\": 4294967295",
                   "4294967295");
    expect_refused("llm/config.json", "\"mm_vision_select_layer\": -1", "\"mm_vision_select_layer\": \"-2\"",
                   "'mm_vision_select_layer' = \"-2\"");
    expect_refused("llm/config.json", "\"mm_vision_select_feature\": \"patch\"", "\"mm_vision_select_feature\": \"cls\"",
                   "\"cls\"");
    expect_refused("llm/config.json", "\"mm_hidden_size\": 48", "\"mm_hidden_size\": 64", "'mm_hidden_size' = 64");
    expect_refused("llm/config.json", "\"mm_hidden_size\": 48", "\"mm_hidden_size\": 4294967344",
                   "'mm_hidden_size' = 4294967344");
    expect_refused("vision/config.json", "\"hidden_size\": 48", "\"hidden_size\": 4294967344",
                   "'hidden_size' = 4294967344");
    expect_refused("vision/config.json", "\"hidden_size\": 48", "\"hidden_size\": 50", "'hidden_size' = 50");
    expect_refused("vision/config.json", "\"patch_size\": 14", "\"patch_size\": 200", "'patch_size' = 200");
    expect_refused("vision/config.json", "\"patch_size\": 14", "\"patch_size\": 4294967310", "4294967310");
    expect_refused("vision/preprocessor_config.json", "\"height\": 126", "\"height\": 4294967422", "'height' = 4294967422");
    expect_refused("vision/preprocessor_config.json", "\"height\": 126", "\"height\": \"126\"", "'height' = \"126\"");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    run(cmd);
    mm_backend_free(be);
    return mm_test_finish("test_vision_malformed");
}
