/* int8 kernels (kernels.h). Requantization is mobiledl.deploy.mcu.fixedpoint's, bit for bit:
 * MDL_ROUNDING 0 = one rounding ties to even, 1 = ties up, 2 = gemmlowp's double rounding.
 * Signed right shifts are arithmetic (as gcc and arm-none-eabi-gcc implement them). */
#include <string.h>
#include "kernels.h"
#include "model.h"

static int32_t sat32(int64_t v) {
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}

#if MDL_ROUNDING == 2
static int32_t srdhm(int32_t a, int32_t b) {
    int64_t product = (int64_t)a * b;
    int64_t total = product + (product >= 0 ? (1LL << 30) : (1 - (1LL << 30)));
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    return (int32_t)(total >= 0 ? total >> 31 : -((-total) >> 31));
}

static int32_t requant(int32_t acc, int32_t m0, int32_t shift) {
    int left = shift > 0 ? shift : 0, right = shift < 0 ? -shift : 0;
    int32_t x = srdhm(sat32((int64_t)acc * ((int64_t)1 << left)), m0);
    int32_t mask = (int32_t)(((int64_t)1 << right) - 1);
    int32_t threshold = (mask >> 1) + (x < 0);
    return (x >> right) + ((x & mask) > threshold);
}
#else
static int32_t requant(int32_t acc, int32_t m0, int32_t shift) {
    int total = 31 - shift;
    int64_t product = (int64_t)acc * m0;
    int64_t half = (int64_t)1 << (total - 1);
#if MDL_ROUNDING == 0
    half = half - 1 + ((product >> total) & 1);
#endif
    return sat32((product + half) >> total);
}
#endif

static int8_t clamp8(int32_t v, int32_t lo, int32_t hi) {
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

static void store(const mdl_op *p, void *y, long i, int32_t acc, int ch) {
    if (p->m0 == 0) {
        ((int32_t *)y)[i] = acc;
        return;
    }
    ((int8_t *)y)[i] = clamp8(requant(acc, p->m0[ch], p->shift[ch]) + p->out_zp, p->lo, p->hi);
}

static int32_t conv_acc(const mdl_op *p, const int8_t *x, int oc, int oy, int ox) {
    int per_in = p->in_c / p->groups;
    const int8_t *w = p->weight + (long)oc * per_in * p->kh * p->kw;
    int32_t acc = p->bias[oc];
    for (int ic = 0; ic < per_in; ++ic) {
        for (int ky = 0; ky < p->kh; ++ky) {
            int iy = oy * p->sh - p->pt + ky;
            for (int kx = 0; kx < p->kw; ++kx) {
                int ix = ox * p->sw - p->pl + kx;
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) continue;
                int32_t v = x[ic * p->in_plane + iy * p->in_pitch + ix] - p->in_zp;
                acc += v * w[(ic * p->kh + ky) * p->kw + kx];
            }
        }
    }
    return acc;
}

/* Output plane oc from x, the first input channel of oc's group, into y at plane `at`. */
static void conv_plane(const mdl_op *p, const int8_t *x, int oc, void *y, int at) {
    for (int oy = 0; oy < p->out_h; ++oy)
        for (int ox = 0; ox < p->out_w; ++ox)
            store(p, y, at * p->out_plane + oy * p->out_pitch + ox, conv_acc(p, x, oc, oy, ox), oc);
}

void mdl_conv(const mdl_op *p, const int8_t *x, void *y) {
    int per_in = p->in_c / p->groups, per_out = p->out_c / p->groups;
    for (int oc = 0; oc < p->out_c; ++oc) {
        long group = oc / per_out;
        conv_plane(p, x + group * per_in * p->in_plane, oc, y, oc);
    }
}

/* TinyEngine's in-place depthwise: channel c to the one-plane temporary, then to plane c of
 * the shared slot, behind the input planes still to be read (both views contiguous). */
void mdl_depthwise_in_place(const mdl_op *p, int8_t *xy, int8_t *temp) {
    for (int c = 0; c < p->in_c; ++c) {
        conv_plane(p, xy + c * p->in_plane, c, temp, 0);
        memcpy(xy + c * p->out_plane, temp, (size_t)p->out_plane);
    }
}

void mdl_fc(const mdl_op *p, const int8_t *x, void *y) {
    for (int o = 0; o < p->out_c; ++o) {
        int32_t acc = p->bias[o];
        const int8_t *w = p->weight + (long)o * p->in_c;
        for (int i = 0; i < p->in_c; ++i) acc += (x[i] - p->in_zp) * w[i];
        store(p, y, o, acc, o);
    }
}

static int32_t window(const mdl_op *p, const int8_t *x, int oy, int ox, int is_max) {
    int32_t acc = is_max ? -128 : 0;
    for (int ky = 0; ky < p->kh; ++ky) {
        int iy = oy * p->sh - p->pt + ky;
        for (int kx = 0; kx < p->kw; ++kx) {
            int ix = ox * p->sw - p->pl + kx;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) continue;
            int32_t v = x[iy * p->in_pitch + ix];
            acc = is_max ? (v > acc ? v : acc) : acc + v - p->in_zp;
        }
    }
    return is_max ? acc - p->in_zp : acc;
}

void mdl_pool(const mdl_op *p, const int8_t *x, int8_t *y, int is_max) {
    for (int c = 0; c < p->in_c; ++c)
        for (int oy = 0; oy < p->out_h; ++oy)
            for (int ox = 0; ox < p->out_w; ++ox) {
                int32_t acc = window(p, x + c * p->in_plane, oy, ox, is_max);
                int32_t v = requant(acc, p->m0[0], p->shift[0]) + p->out_zp;
                y[c * p->out_plane + oy * p->out_pitch + ox] = clamp8(v, p->lo, p->hi);
            }
}

static int32_t rescaled(int8_t v, int32_t zp, int32_t m0, int32_t shift) {
    return requant((v - zp) * (1 << MDL_ADD_LEFT_SHIFT), m0, shift);
}

void mdl_add(const mdl_add_op *p, const int8_t *a, const int8_t *b, int8_t *y) {
    for (int c = 0; c < p->c; ++c)
        for (int i = 0; i < p->h; ++i)
            for (int j = 0; j < p->w; ++j) {
                int32_t ra = rescaled(a[c * p->a_plane + i * p->a_pitch + j], p->zp_a, p->m0_a,
                                      p->sh_a);
                int32_t rb = rescaled(b[c * p->b_plane + i * p->b_pitch + j], p->zp_b, p->m0_b,
                                      p->sh_b);
                int32_t v = requant(ra + rb, p->m0, p->shift) + p->out_zp;
                y[c * p->y_plane + i * p->y_pitch + j] = clamp8(v, p->lo, p->hi);
            }
}

void mdl_crop(const int8_t *x, long pitch, long plane, int c, int h, int w, int8_t *y) {
    for (int k = 0; k < c; ++k)
        for (int i = 0; i < h; ++i) memcpy(y + ((long)k * h + i) * w, x + k * plane + i * pitch, (size_t)w);
}
