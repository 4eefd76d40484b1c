/* mm-quantize: converts an HF LLaMA checkpoint directory (f32, bf16 or f16; a plain
 * LLaMA or MetaMorph's llm/) to the q8 format of common/q8.h: the linear weights of the
 * layers (and lm_head unless --keep-lm-head) become I8 + F16 block scales, the rest is
 * copied. Wiring only: the conversion is tools/q8_convert.c. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "tools/q8_convert.h"

static void usage(FILE *f) {
    fprintf(f, "usage: mm-quantize SRC_DIR DST_DIR [--keep-lm-head] [--shard-mb MB]\n"
               "  converts SRC_DIR's linear weights to q8 (int8, f16 scales per 32 inputs) into DST_DIR\n");
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"keep-lm-head", no_argument, 0, 'k'}, {"shard-mb", required_argument, 0, 'S'},
                                         {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int lm_head = 1, c;
    long shard_mb = 2048;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'k': lm_head = 0; break;
        case 'S': shard_mb = atol(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (argc - optind != 2 || shard_mb <= 0) {
        usage(stderr);
        return 2;
    }
    if (q8_convert_dir(argv[optind], argv[optind + 1], lm_head, (size_t)shard_mb << 20)) return 1;
    fprintf(stderr, "mm-quantize: %s -> %s (q8%s)\n", argv[optind], argv[optind + 1], lm_head ? ", lm_head too" : "");
    return 0;
}
