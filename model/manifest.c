/* See manifest.h. */
#include "manifest.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"

static mm_status part_path(const mm_json *root, const char *file, const char *dir, const char *key, char *out,
                           size_t cap) {
    const char *rel = NULL;
    CHECK(mm_json_str(root, file, key, NULL, &rel));
    out[0] = '\0';
    if (!rel) return MM_OK;
    if ((size_t)snprintf(out, cap, "%s/%s", dir, rel) >= cap)
        return MM_ERROR(MM_ERR_INVALID, "%s: path of '%s' too long", file, key);
    if (access(out, R_OK) != 0) return MM_ERROR(MM_ERR_NOT_FOUND, "%s: part '%s' -> %s does not exist", file, key, out);
    return MM_OK;
}

mm_status mm_model_paths_resolve(const char *dir, mm_model_paths *out) {
    memset(out, 0, sizeof *out);
    char file[4096];
    snprintf(file, sizeof file, "%s/metamorph.json", dir);
    if (access(file, R_OK) != 0) {
        snprintf(file, sizeof file, "%s/config.json", dir);
        if (access(file, R_OK) != 0)
            return MM_ERROR(MM_ERR_NOT_FOUND, "%s: neither metamorph.json nor config.json found", dir);
        snprintf(out->llm, sizeof out->llm, "%s", dir);
        return MM_OK;
    }
    mm_json *root;
    CHECK(mm_json_load(file, &root));
    mm_status s = part_path(root, file, dir, "llm", out->llm, sizeof out->llm);
    if (s == MM_OK) s = part_path(root, file, dir, "vision", out->vision, sizeof out->vision);
    if (s == MM_OK) s = part_path(root, file, dir, "decoder", out->decoder, sizeof out->decoder);
    if (s == MM_OK && !out->llm[0]) s = MM_ERROR(MM_ERR_FORMAT, "%s: no \"llm\" part", file);
    mm_json_free(root);
    return s;
}

mm_status mm_model_part_dir(const char *dir, const char *part, char *out, size_t cap) {
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/metamorph.json", dir);
    const char *found = dir;
    mm_model_paths paths;
    if (access(probe, R_OK) == 0) {
        CHECK(mm_model_paths_resolve(dir, &paths));
        if (!strcmp(part, "vision")) found = paths.vision;
        else if (!strcmp(part, "decoder")) found = paths.decoder;
        else return MM_ERROR(MM_ERR_INVALID, "unknown model part '%s' (vision, decoder)", part);
        if (!found[0]) return MM_ERROR(MM_ERR_NOT_FOUND, "%s: the manifest names no %s", probe, part);
    }
    if ((size_t)snprintf(out, cap, "%s", found) >= cap) return MM_ERROR(MM_ERR_INVALID, "%s: path too long", found);
    return MM_OK;
}
