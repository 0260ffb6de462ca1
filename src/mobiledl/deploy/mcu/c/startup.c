/* Cortex-M start-up: the vector table (initial stack pointer, reset handler), .data copied
 * from flash, .bss zeroed, main, then a semihosting exit with main's verdict. */
#include <stdint.h>
#include <string.h>
#include "semihost.h"

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__;
extern uint32_t __stack_top__;
int main(void);

static void stop(int32_t reason) {
    for (;;) mdl_semihost(MDL_SYS_EXIT, (const void *)(uintptr_t)reason);
}

void reset_handler(void) {
    memcpy(&__data_start__, &__data_load__,
           (size_t)((char *)&__data_end__ - (char *)&__data_start__));
    memset(&__bss_start__, 0, (size_t)((char *)&__bss_end__ - (char *)&__bss_start__));
    stop(main() == 0 ? MDL_EXIT_OK : MDL_EXIT_ERROR);
}

static void fault_handler(void) { stop(MDL_EXIT_ERROR); }

typedef void (*mdl_handler)(void);
__attribute__((section(".vectors"), used)) static const mdl_handler vectors[16] = {
    (mdl_handler)(uintptr_t)&__stack_top__, reset_handler, fault_handler, fault_handler,
    fault_handler, fault_handler, fault_handler, 0, 0, 0, 0, fault_handler, fault_handler, 0,
    fault_handler, fault_handler};
