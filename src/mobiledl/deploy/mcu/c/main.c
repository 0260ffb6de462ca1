/* Host driver: reads int8 input images (raw, MDL_INPUT_BYTES each) from argv[1] until EOF,
 * runs the model on each and appends its raw output to argv[2]. */
#include <stdio.h>
#include "model.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT.bin OUTPUT.bin\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out) {
        fprintf(stderr, "cannot open %s or %s\n", argv[1], argv[2]);
        return 1;
    }
    while (fread(mdl_input(), 1, MDL_INPUT_BYTES, in) == MDL_INPUT_BYTES) {
        mdl_run();
        fwrite(mdl_output(), 1, MDL_OUTPUT_BYTES, out);
    }
    fclose(in);
    return fclose(out) != 0;
}
