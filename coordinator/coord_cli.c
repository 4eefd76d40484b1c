/* See coord_cli.h. Every listing comes from serve_config.c's table, so the help, the
 * printed config and README's reference cannot drift from what the service reads
 * (tests/unit/test_config_reference.sh diffs README against --config-reference). */
#include "coord_cli.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/runtime.h"

mm_status mm_coord_model_load(const mm_serve_config *cfg, mm_coord_model *m) {
    memset(m, 0, sizeof *m);
    CHECK(mm_model_paths_resolve(cfg->model, &m->paths));
    CHECK(mm_llama_config_load(m->paths.llm, &m->llm));
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", m->paths.llm);
    CHECK(mm_tokenizer_load(tok_path, &m->tok));
    if (!mm_metamorph_is_checkpoint(m->paths.llm)) return MM_OK;
    return mm_metamorph_config_load(m->paths.llm, m->tok, &m->mm);
}

void mm_coord_model_free(mm_coord_model *m) {
    mm_tokenizer_free(m->tok);
    m->tok = NULL;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: mpiexec -n 1 mm-coordinator CFG : -n P mm-stage CFG   serve (or: deploy/launch.sh CFG)\n"
            "       mm-coordinator --print-config [CFG]   every key: value in CFG (or the default), default, doc\n"
            "       mm-coordinator --check CFG            validate CFG and the model files; print the effective\n"
            "                                             config and the model's parts as JSON\n"
            "       mm-coordinator --config-reference     the README's configuration table (Markdown)\n"
            "       mm-coordinator --help\n"
            "CFG is a JSON object of the keys below (unknown keys are errors; keys starting with _ are\n"
            "comments). The environment overrides the keys whose line names an env variable\n"
            "(MM_MODEL, MM_LISTEN, ...), in every program of the service.\n"
            "Exit status %d: the config or the model files are wrong (a supervisor must not retry).\n\n",
            MM_EXIT_CONFIG);
}

/* Markdown pipes inside a cell must be escaped. */
static void md_cell(FILE *f, const char *s) {
    for (; *s; s++) fputs(*s == '|' ? "\\|" : (char[]){*s, 0}, f);
}

typedef enum { LIST_TEXT, LIST_MARKDOWN, LIST_JSON } list_form;

static void list_tunables(FILE *f, const mm_serve_config *c, list_form form) {
    mm_serve_tunable t;
    if (form == LIST_MARKDOWN) fprintf(f, "| key | default | env | meaning |\n|---|---|---|---|\n");
    if (form == LIST_JSON) fputs("{", f);
    for (size_t i = 0; i < mm_serve_config_n_tunables(); i++) {
        mm_serve_config_tunable(c, i, &t);
        if (form == LIST_TEXT) {
            fprintf(f, "%-20s = %-24s # default %s%s%s; %s\n", t.key, t.value, t.def, t.env ? ", env " : "",
                    t.env ? t.env : "", t.doc);
        } else if (form == LIST_JSON) {
            fprintf(f, "%s\n  \"%s\": %s", i ? "," : "", t.key, t.value);
        } else {
            fprintf(f, "| `%s` | `", t.key);
            md_cell(f, t.def);
            fprintf(f, "` | %s%s%s | ", t.env ? "`" : "", t.env ? t.env : "", t.env ? "`" : "");
            md_cell(f, t.doc);
            fputs(" |\n", f);
        }
    }
    if (form == LIST_JSON) fputs("}", f);
}

/* Loads CFG (NULL: defaults) or says why not. */
static int load_config(const char *path, mm_serve_config *c) {
    if (mm_serve_config_load(path, c) == MM_OK) return 0;
    fprintf(stderr, "mm-coordinator: %s\n", mm_error_without_location(mm_error_last()));
    return MM_EXIT_CONFIG;
}

/* --check: the config, then the model files as serving reads them. */
static int check(const char *path) {
    mm_serve_config c;
    int rc = load_config(path, &c);
    if (rc) return rc;
    mm_coord_model m;
    if (mm_coord_model_load(&c, &m) != MM_OK) {
        fprintf(stderr, "mm-coordinator: model %s: %s\n", c.model, mm_error_without_location(mm_error_last()));
        mm_coord_model_free(&m);
        return MM_EXIT_CONFIG;
    }
    /* the pools serve only what the coordinator binds: a MetaMorph LLM with that part */
    int metamorph = mm_metamorph_is_checkpoint(m.paths.llm);
    printf("{\"config\": ");
    list_tunables(stdout, &c, LIST_JSON);
    json_t *parts = json_pack("{s:s, s:s, s:s}", "llm", m.paths.llm, "vision", metamorph ? m.paths.vision : "",
                              "decoder", metamorph ? m.paths.decoder : "");
    char *text = parts ? json_dumps(parts, JSON_COMPACT) : NULL;
    printf(",\n\"parts\": %s}\n", text ? text : "{}");
    free(text);
    json_decref(parts);
    mm_coord_model_free(&m);
    return text ? 0 : 1;
}

int mm_coord_cli(int argc, char **argv) {
    if (argc == 2 && strncmp(argv[1], "--", 2) != 0) return -1;
    const char *a = argc >= 2 ? argv[1] : "";
    mm_serve_config c;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
        usage(stdout);
        mm_serve_config_defaults(&c);
        list_tunables(stdout, &c, LIST_TEXT);
        return 0;
    }
    if (!strcmp(a, "--print-config") && argc <= 3) {
        int rc = load_config(argc == 3 ? argv[2] : NULL, &c);
        if (!rc) list_tunables(stdout, &c, LIST_TEXT);
        return rc;
    }
    if (!strcmp(a, "--config-reference") && argc == 2) {
        mm_serve_config_defaults(&c);
        list_tunables(stdout, &c, LIST_MARKDOWN);
        return 0;
    }
    if (!strcmp(a, "--check") && argc == 3) return check(argv[2]);
    usage(stderr);
    return 2;
}
