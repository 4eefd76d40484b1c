/* mm_vision_select_layer end to end, against the reference (tests/golden/select_layer/,
 * from make_select_layer_goldens.py): the tiny MetaMorph LLM with a 4-layer SigLIP whose
 * config says -2 or 1, asked about an image through `mm-run --image`. The golden answer
 * differs from the one the last layer gives (checked by the generator and again here),
 * so a path that ignores the config fails. Also prompts whose text holds "<image>" or
 * "<image_start><image_end>" (markers.jsonl): only "<image>" is a placeholder, as in
 * the reference's tokenizer_image_token. argv[1] is the mm-run binary. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "model/metamorph.h"
#include "model/vision_tower.h"
#include "tests/testutil.h"

static void check_case(const char *mm_run, json_t *row) {
    int layer = (int)json_integer_value(json_object_get(row, "select_layer"));
    char root[256], cmd[600];
    EXPECT(mm_test_model_root(mm_golden_path("select_layer/vision"), layer, root, sizeof root) == 0,
           "model root for layer %d", layer);
    /* the one loader: the config's layer, hidden state 3 (-2) or 1 of 4 */
    mm_backend *be = NULL;
    mm_vision_tower vt = {0};
    EXPECT(mm_backend_init("cpu", 1, &be) == MM_OK && mm_vision_tower_load(root, be, &vt) == MM_OK, "%s",
           mm_error_last());
    EXPECT(vt.sig && vt.select_layer == layer && vt.sig->run_layers == (layer < 0 ? 5 + layer : layer),
           "layer %d: tower runs %d layers", layer, vt.sig ? vt.sig->run_layers : -1);
    mm_vision_tower_free(&vt);
    mm_backend_free(be);

    json_t *content = json_object_get(json_array_get(json_object_get(row, "messages"), 0), "content");
    const char *text = NULL;
    for (size_t i = 0; i < json_array_size(content); i++) {
        json_t *part = json_array_get(content, i);
        if (!strcmp(json_string_value(json_object_get(part, "type")), "text"))
            text = json_string_value(json_object_get(part, "text"));
    }
    char image[1024], rel[512], maxs[16];
    snprintf(rel, sizeof rel, "vision/%s", json_string_value(json_array_get(json_object_get(row, "images"), 0)));
    snprintf(image, sizeof image, "%s", mm_golden_path(rel));
    snprintf(maxs, sizeof maxs, "%d", (int)json_integer_value(json_object_get(row, "max_new_tokens")));
    char *argv[] = {(char *)mm_run, "--model", root,   "--prompt",  (char *)text, "--image", image,
                    "--max-tokens", maxs,  "--ids", "--threads", "2",          NULL};
    char *out = mm_test_run_capture(argv);
    EXPECT(out != NULL, "layer %d: mm-run failed", layer);
    int32_t got[256];
    size_t n = 0;
    for (char *p = out ? strtok(out, " \n") : NULL; p && n < 256; p = strtok(NULL, " \n")) got[n++] = (int32_t)atoi(p);
    EXPECT(mm_test_ids_equal(json_object_get(row, "greedy_ids"), got, n), "layer %d: mm-run ids differ from the reference",
           layer);
    EXPECT(!mm_test_ids_equal(json_object_get(row, "last_layer_ids"), got, n), "layer %d: the last layer's answer", layer);
    free(out);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    EXPECT(system(cmd) == 0, "%s", cmd);
}

static void check_markers(void) {
    mm_tokenizer *tok = NULL;
    EXPECT(mm_tokenizer_load(mm_asset_path("tiny/llm/tokenizer.json"), &tok) == MM_OK, "%s", mm_error_last());
    FILE *f = fopen(mm_golden_path("select_layer/markers.jsonl"), "r");
    EXPECT(f != NULL, "markers.jsonl");
    char line[1 << 14];
    int n_lines = 0;
    while (tok && f && fgets(line, sizeof line, f)) {
        json_t *row = json_loads(line, 0, NULL);
        const char *text = json_string_value(json_object_get(json_array_get(json_object_get(row, "messages"), 0), "content"));
        mm_chat_message m = {"user", text};
        int32_t *ids = NULL;
        size_t n = 0;
        int n_img = -1;
        EXPECT(mm_metamorph_prompt_encode(tok, &m, 1, 0, &ids, &n, &n_img) == MM_OK, "%s", mm_error_last());
        EXPECT(mm_test_ids_equal(json_object_get(row, "prompt_ids"), ids, n) &&
                   n_img == json_integer_value(json_object_get(row, "n_placeholders")),
               "\"%s\": ids or %d placeholders differ from tokenizer_image_token's", text, n_img);
        free(ids);
        json_decref(row);
        n_lines++;
    }
    EXPECT(n_lines == 3, "%d marker lines", n_lines);
    if (f) fclose(f);
    mm_tokenizer_free(tok);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *f = fopen(mm_golden_path("select_layer/golden.jsonl"), "r");
    char line[1 << 15];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        json_t *row = json_loads(line, 0, NULL);
        EXPECT(row != NULL, "golden line %d", n + 1);
        if (row) check_case(argv[1], row), n++;
        json_decref(row);
    }
    if (f) fclose(f);
    EXPECT(n == 4, "%d golden lines", n);
    check_markers();
    return mm_test_finish("test_select_layer");
}
