/* ARM semihosting (the debugger or emulator does the I/O): open, read, write, close, exit.
 * Each call is `bkpt 0xab` with the operation in r0 and its argument block in r1. */
#ifndef MDL_SEMIHOST_H
#define MDL_SEMIHOST_H
#include <stdint.h>

#define MDL_SYS_OPEN 0x01
#define MDL_SYS_CLOSE 0x02
#define MDL_SYS_WRITE 0x05
#define MDL_SYS_READ 0x06
#define MDL_SYS_EXIT 0x18
#define MDL_EXIT_OK 0x20026 /* ADP_Stopped_ApplicationExit */
#define MDL_EXIT_ERROR 0x20024 /* ADP_Stopped_RunTimeErrorUnknown */

static inline int32_t mdl_semihost(int32_t op, const void *arg) {
    register int32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
#endif
