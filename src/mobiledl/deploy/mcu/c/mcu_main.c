/* Cortex-M driver: reads int8 input images (raw, MDL_INPUT_BYTES each) from input.bin until
 * its end, runs the model on each and writes the raw outputs to output.bin, over semihosting.
 * Returns 0 when every image ran. */
#include <stdint.h>
#include "model.h"
#include "semihost.h"

static int32_t open_file(const char *name, int32_t mode) {
    int32_t length = 0;
    while (name[length]) ++length;
    const int32_t block[3] = {(int32_t)(uintptr_t)name, mode, length};
    return mdl_semihost(MDL_SYS_OPEN, block);
}

/* Bytes NOT transferred (semihosting's convention). */
static int32_t transfer(int32_t op, int32_t handle, const void *buffer, int32_t size) {
    const int32_t block[3] = {handle, (int32_t)(uintptr_t)buffer, size};
    return mdl_semihost(op, block);
}

int main(void) {
    int32_t in = open_file("input.bin", 1), out = open_file("output.bin", 5);
    if (in < 0 || out < 0) return 1;
    int failed = 0;
    while (transfer(MDL_SYS_READ, in, mdl_input(), MDL_INPUT_BYTES) == 0) {
        mdl_run();
        failed |= transfer(MDL_SYS_WRITE, out, mdl_output(), MDL_OUTPUT_BYTES) != 0;
    }
    mdl_semihost(MDL_SYS_CLOSE, &in);
    failed |= mdl_semihost(MDL_SYS_CLOSE, &out) != 0;
    return failed;
}
