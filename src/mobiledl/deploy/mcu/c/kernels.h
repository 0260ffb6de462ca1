/* int8 kernels of mobiledl's MCU runtime (Jacob et al. 2018 integer inference; TinyEngine,
 * Lin et al. 2020): NCHW, batch 1, int32 accumulation, fixed-point requantization.
 * Every tensor is a view: element (c, y, x) sits at c * plane + y * pitch + x, so a kernel
 * reads a crop of a larger tile and writes into a patch of a larger tensor (MCUNetV2's
 * patch-based inference, Lin et al. 2021). */
#ifndef MDL_KERNELS_H
#define MDL_KERNELS_H
#include <stdint.h>

typedef struct {
    int in_c, in_h, in_w, out_c, out_h, out_w, kh, kw, sh, sw, pt, pl, groups;
    long in_pitch, in_plane, out_pitch, out_plane;
    int32_t in_zp, out_zp, lo, hi;
    const int8_t *weight;
    const int32_t *bias, *m0, *shift; /* m0 == 0: int32 output (float-output layer) */
} mdl_op;

typedef struct {
    int c, h, w;
    long a_pitch, a_plane, b_pitch, b_plane, y_pitch, y_plane;
    int32_t zp_a, zp_b, out_zp, lo, hi, m0_a, sh_a, m0_b, sh_b, m0, shift;
} mdl_add_op;

void mdl_conv(const mdl_op *p, const int8_t *x, void *y);
void mdl_depthwise_in_place(const mdl_op *p, int8_t *xy, int8_t *temp);
void mdl_fc(const mdl_op *p, const int8_t *x, void *y);
void mdl_pool(const mdl_op *p, const int8_t *x, int8_t *y, int is_max);
void mdl_add(const mdl_add_op *p, const int8_t *a, const int8_t *b, int8_t *y);
/* Copy a (c, h, w) view into a contiguous buffer (a patch of the input image). */
void mdl_crop(const int8_t *x, long pitch, long plane, int c, int h, int w, int8_t *y);
#endif
