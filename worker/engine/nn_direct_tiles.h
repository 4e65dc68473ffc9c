/* nn_direct_tiles.h - the direct convolution's vector loops, written once for every
 * vector width: nn_direct.c includes this file once per instruction set, each time
 * with the macros below defined for that set, and gets the functions named by
 * TL_NAME and a table of them, TL_NAME(kernels).
 *
 * The includer defines (and this file undefines at its end):
 *   TL_NAME(x)        x with the set's suffix (x##_avx2)
 *   TL_TARGET         the set's target attribute
 *   TL_V, TL_VN       the vector type of floats and its lanes
 *   TL_MASK           the type of a lane mask for masked loads and stores
 *   TL_TAIL(n)        the mask of lanes [0, n) (n may be <= 0 or >= TL_VN)
 *   TL_ZERO(), TL_SET1(f), TL_BCAST(p), TL_LOAD(p), TL_LOADM(p, m), TL_STORE(p, v),
 *   TL_STOREM(p, m, v), TL_ADD(a, b), TL_FMA(a, b, c) (a * b + c, one rounding),
 *   TL_PRELU(a, s)    (a > 0 ? a : a * s, lane by lane)
 *   TL_SUB(a, b)      a - b
 *   TL_EVEN(lo, hi), TL_ODD(lo, hi)  the even (odd) lanes of the 2 * TL_VN floats lo, hi
 *   TL_ZIPLO(a, b), TL_ZIPHI(a, b)   a0 b0 a1 b1 ... for the low (high) half of a and b
 *   TL_UNPACKLO(a, b), TL_UNPACKHI(a, b)  a0 b0 a1 b1 (a2 b2 a3 b3) in each 128-bit quarter
 *   TL_SHUFLO(a, b), TL_SHUFHI(a, b)      a0 a1 b0 b1 (a2 a3 b2 b3) in each 128-bit quarter
 *   TL_MAX(a, b)      the larger of a and b, lane by lane
 *   TL_KEEP(m, a, f)  a in the lanes of mask m, f in the others
 *   TL_NEXT0(o, e), TL_NEXT1(o, e)   for o in tr4's block order (block k * TL_VN / 4 + q
 *                     in quarter q, element k), each block's next block's lane, the
 *                     last one's from e[0] (TL_NEXT1: e[1])
 *   TL_WT_CO          output channels per product group of the Winograd kernel
 *   TL_DC_OC_WIDE     (optional) column tiles of this many output channels besides
 *                     those of 4 and 5 (nn_conv_direct takes the tile that leaves the
 *                     fewest channels empty, the widest of equals)
 *
 * Every set sums each output in the same order (each input channel, tap row, tap
 * column, from 0, one fused multiply-add each), then adds the bias and applies PReLU
 * the same way, and each lane is one output: the sets give the same bits, and so do
 * column and position tiles. A wider set only computes more outputs at a time. */

#define TL_DC_NV 2                 /* a column tile's vectors of columns */
#define TL_COLS (TL_VN * TL_DC_NV) /* columns per column tile */
#define TL_OC_MAX 8                /* a column tile's most output channels */
#define TL_PT_OC (2 * TL_VN)       /* channels per position tile: two vectors */
/* Position tiles whose panel of weights (k taps x TL_PT_OC channels) is larger than
 * PT_PF_PANEL bytes (the dlib ResNet's layers: 72 KB to 1.2 MB, read from L2 or L3)
 * prefetch it PT_PF taps ahead: the loads of the first tile over a panel stalled on
 * L3 (one face, 5.3 against 4.7 ms). Panels that stay in L1 (R-Net's and O-Net's,
 * 32 KB and less) do not: the prefetches cost them load slots (R-Net 4% slower). */
#ifndef PT_PF
#define PT_PF 24
#endif
#ifndef PT_PF_PANEL
#define PT_PF_PANEL (48 * 1024)
#endif
#define TL_INLINE static inline __attribute__((always_inline)) TL_TARGET DC_ASAN_OFF

/* One tile: output channels oc..oc+noc-1 (nco of them stored) at row oy, columns
 * ox..ox+TL_COLS-1 (the first rem stored; tail: masked loads and stores). xp points at
 * input channel 0, row oy, column ox; wp at the tile's packed weights [k][noc]. noc is
 * a constant where it is inlined, so the loops over it unroll. */
TL_INLINE void TL_NAME(dc_tile)(const float *restrict xp, size_t plane, int w, int c,
                                const int kh, const int kw, const float *restrict wp,
                                const float *restrict b, const float *restrict s, int prelu,
                                float *restrict yp, size_t oplane, int nco, const int tail,
                                int rem, const int noc)
{
    TL_V acc[TL_OC_MAX][TL_DC_NV];
    for (int r = 0; r < noc; r++)
        for (int v = 0; v < TL_DC_NV; v++)
            acc[r][v] = TL_ZERO();
    TL_MASK m[TL_DC_NV];
    if (tail)
        for (int v = 0; v < TL_DC_NV; v++)
            m[v] = TL_TAIL(rem - TL_VN * v);
    const float *wk = wp;
    for (int ci = 0; ci < c; ci++) {
        const float *xc = xp + (size_t)ci * plane;
        for (int ky = 0; ky < kh; ky++) {
            const float *xr = xc + (size_t)ky * (size_t)w;
            for (int kx = 0; kx < kw; kx++, wk += noc) {
                TL_V xv[TL_DC_NV];
                for (int v = 0; v < TL_DC_NV; v++)
                    xv[v] = tail ? TL_LOADM(xr + kx + TL_VN * v, m[v])
                                 : TL_LOAD(xr + kx + TL_VN * v);
                for (int r = 0; r < noc; r++) {
                    const TL_V wv = TL_BCAST(wk + r);
                    for (int v = 0; v < TL_DC_NV; v++)
                        acc[r][v] = TL_FMA(wv, xv[v], acc[r][v]);
                }
            }
        }
    }
    for (int r = 0; r < noc; r++) {
        if (r >= nco)
            break;
        const TL_V bv = TL_SET1(b[r]), sv = TL_SET1(s[r]);
        float *yr = yp + (size_t)r * oplane;
        for (int v = 0; v < TL_DC_NV; v++) {
            TL_V a = TL_ADD(acc[r][v], bv);
            if (prelu)
                a = TL_PRELU(a, sv);
            if (tail)
                TL_STOREM(yr + TL_VN * v, m[v], a);
            else
                TL_STORE(yr + TL_VN * v, a);
        }
    }
}

/* The tiles of one run of len outputs whose taps start at xp (rows g->w apart) and
 * which are stored from yp on (output channels oplane apart). */
TL_INLINE void TL_NAME(dc_run)(const conv_geom *g, const float *xp, int len,
                               const float *wpk, const float *b, const float *s, int prelu,
                               float *yp, size_t oplane, const int kh, const int kw,
                               const int noc)
{
    const size_t plane = (size_t)g->h * (size_t)g->w, wtile = (size_t)g->k * noc;
    for (int ox = 0; ox < len; ox += TL_COLS) {
        const int rem = len - ox;
        for (int oc = 0; oc < g->co; oc += noc) {
            const int nco = g->co - oc < noc ? g->co - oc : noc;
            const float *wp = wpk + (size_t)(oc / noc) * wtile;
            float *y = yp + (size_t)oc * oplane + ox;
            if (rem >= TL_COLS)
                TL_NAME(dc_tile)(xp + ox, plane, g->w, g->c, kh, kw, wp, b + oc, s + oc,
                                 prelu, y, oplane, nco, 0, rem, noc);
            else
                TL_NAME(dc_tile)(xp + ox, plane, g->w, g->c, kh, kw, wp, b + oc, s + oc,
                                 prelu, y, oplane, nco, 1, rem, noc);
        }
    }
}

/* One image: a run per output row into y, or (flat) one run over the whole plane as
 * if the output were as wide as the input, into yf (oh x w per output channel; the
 * last kw - 1 columns of each row are not outputs, and the caller drops them). A
 * valid convolution's taps of consecutive outputs are consecutive inputs across row
 * ends too, so small planes fill whole tiles instead of one partial tile per row. */
TL_INLINE void TL_NAME(dc_image)(const conv_geom *g, const float *x, const float *wpk,
                                 const float *b, const float *s, int prelu, float *y,
                                 int flat, const int kh, const int kw, const int noc)
{
    if (flat) {
        TL_NAME(dc_run)(g, x, (g->oh - 1) * g->w + g->ow, wpk, b, s, prelu, y,
                        (size_t)g->oh * (size_t)g->w, kh, kw, noc);
        return;
    }
    for (int oy = 0; oy < g->oh; oy++)
        TL_NAME(dc_run)(g, x + (size_t)oy * (size_t)g->w, g->ow, wpk, b, s, prelu,
                        y + (size_t)oy * (size_t)g->ow, (size_t)g->p, kh, kw, noc);
}

/* ---- a 3x3 convolution, PReLU and a 2x2 stride-2 max pool in one pass -------------
 *
 * P-Net's first layer (3 to 10 channels over the whole pyramid) and the pool after it:
 * the column tile above on two convolution rows at once, each output summed, biased
 * and activated exactly as dc_tile does it (the same bits), then the maximum of the two
 * rows and of each pair of columns stored as the pool's output; the convolution's own
 * output, four times the pool's, is never stored. Columns past the convolution's
 * output take no part (-inf), nor does a missing second row (ceil mode's last row). */

/* Pool row py from convolution rows 2 py and (two) 2 py + 1, convolution columns
 * ox..ox+TL_COLS-1 (rem of them exist; tail: fewer than TL_COLS), channels noc of which
 * nco are stored, prem pool outputs stored from yp on. xp: input channel 0, row 2 py,
 * column ox; wp the tile's packed weights [9 c][noc]. */
TL_INLINE void TL_NAME(dp_tile)(const float *restrict xp, size_t plane, int w, int c,
                                const float *restrict wp, const float *restrict b,
                                const float *restrict s, int prelu, float *restrict yp,
                                size_t oplane, int nco, int two, int rem, int prem,
                                const int tail, const int noc)
{
    TL_V acc[TL_OC_MAX][2][TL_DC_NV];
    for (int r = 0; r < noc; r++)
        for (int q = 0; q < 2; q++)
            for (int v = 0; v < TL_DC_NV; v++)
                acc[r][q][v] = TL_ZERO();
    TL_MASK m[TL_DC_NV];
    for (int v = 0; v < TL_DC_NV; v++)
        m[v] = TL_TAIL(rem - TL_VN * v);
    const float *wk = wp;
    for (int ci = 0; ci < c; ci++) {
        const float *xc = xp + (size_t)ci * plane;
        for (int ky = 0; ky < 3; ky++) {
            for (int kx = 0; kx < 3; kx++, wk += noc) {
                TL_V xv[2][TL_DC_NV];
                for (int q = 0; q < 2; q++) {
                    const float *xr = xc + (size_t)(ky + q) * (size_t)w + kx;
                    for (int v = 0; v < TL_DC_NV; v++)
                        xv[q][v] = q && !two ? TL_ZERO()
                                   : tail    ? TL_LOADM(xr + TL_VN * v, m[v])
                                             : TL_LOAD(xr + TL_VN * v);
                }
                for (int r = 0; r < noc; r++) {
                    const TL_V wv = TL_BCAST(wk + r);
                    for (int q = 0; q < 2; q++)
                        for (int v = 0; v < TL_DC_NV; v++)
                            acc[r][q][v] = TL_FMA(wv, xv[q][v], acc[r][q][v]);
                }
            }
        }
    }
    const TL_V ninf = TL_SET1(-INFINITY);
    for (int r = 0; r < noc; r++) {
        if (r >= nco)
            break;
        const TL_V bv = TL_SET1(b[r]), sv = TL_SET1(s[r]);
        TL_V mx[TL_DC_NV];
        for (int v = 0; v < TL_DC_NV; v++) {
            TL_V a = TL_ADD(acc[r][0][v], bv);
            if (prelu)
                a = TL_PRELU(a, sv);
            if (two) {
                TL_V a1 = TL_ADD(acc[r][1][v], bv);
                if (prelu)
                    a1 = TL_PRELU(a1, sv);
                a = TL_MAX(a, a1);
            }
            mx[v] = tail ? TL_KEEP(m[v], a, ninf) : a;
        }
        const TL_V pm = TL_MAX(TL_EVEN(mx[0], mx[1]), TL_ODD(mx[0], mx[1]));
        float *yr = yp + (size_t)r * oplane;
        if (prem >= TL_VN)
            TL_STORE(yr, pm);
        else
            TL_STOREM(yr, TL_TAIL(prem), pm);
    }
}

/* One image: x [c][h][w] -> y [co][ph][pw], the 2x2 stride-2 max pool (ph, pw: its
 * output, ceil mode or not) of the valid 3x3 convolution's output with bias and PReLU;
 * weights packed [co / noc][9 c][noc] (dc_pack). */
TL_INLINE void TL_NAME(dp_image)(const conv_geom *g, const float *x, const float *wpk,
                                 const float *b, const float *s, int prelu, float *y,
                                 int ph, int pw, const int noc)
{
    const size_t plane = (size_t)g->h * (size_t)g->w, wtile = (size_t)g->k * noc;
    const size_t oplane = (size_t)ph * (size_t)pw;
    for (int py = 0; py < ph; py++) {
        const int oy = 2 * py, two = oy + 1 < g->oh;
        const float *xrow = x + (size_t)oy * (size_t)g->w;
        float *yrow = y + (size_t)py * (size_t)pw;
        for (int ox = 0; ox < g->ow; ox += TL_COLS) {
            const int rem = g->ow - ox, px = ox / 2, prem = pw - px;
            if (prem <= 0)
                break;
            for (int oc = 0; oc < g->co; oc += noc) {
                const int nco = g->co - oc < noc ? g->co - oc : noc;
                const float *wp = wpk + (size_t)(oc / noc) * wtile;
                float *yp = yrow + (size_t)oc * oplane + px;
                if (rem >= TL_COLS)
                    TL_NAME(dp_tile)(xrow + ox, plane, g->w, g->c, wp, b + oc, s + oc, prelu,
                                     yp, oplane, nco, two, rem, prem, 0, noc);
                else
                    TL_NAME(dp_tile)(xrow + ox, plane, g->w, g->c, wp, b + oc, s + oc, prelu,
                                     yp, oplane, nco, two, rem, prem, 1, noc);
            }
        }
    }
}

#define TL_DP(sfx, noc)                                                                   \
    TL_TARGET DC_ASAN_OFF static void TL_NAME(dp_image##sfx)(                             \
        const conv_geom *g, const float *x, const float *wpk, const float *b,             \
        const float *s, int prelu, float *y, int ph, int pw)                              \
    {                                                                                     \
        TL_NAME(dp_image)(g, x, wpk, b, s, prelu, y, ph, pw, noc);                        \
    }
TL_DP(_4, 4)
TL_DP(_5, 5)
#ifdef TL_DC_OC_WIDE
TL_DP(_w, TL_DC_OC_WIDE)
#endif
#undef TL_DP

/* One position tile: positions whose inputs start at xs[0..TL_PT_POS) (unused ones
 * repeat the first) and outputs at ys[0..npos); channels oc..oc+TL_PT_OC-1, of which
 * nco are stored. */
TL_INLINE void TL_NAME(pt_tile)(const float *const *xs, int npos, const int *restrict off,
                                int k, const float *restrict wp, const float *restrict b,
                                const float *restrict s, int prelu, float *const *ys,
                                size_t oplane, int nco, const int pf)
{
    TL_V acc[TL_PT_POS][2];
    for (int p = 0; p < TL_PT_POS; p++)
        acc[p][0] = acc[p][1] = TL_ZERO();
    const float *x0 = xs[0], *x1 = xs[1], *x2 = xs[2], *x3 = xs[3], *x4 = xs[4],
                *x5 = xs[5];
#if TL_PT_POS > 6
    const float *x6 = xs[6], *x7 = xs[7];
#endif
    for (int t = 0; t < k; t++) {
        const int o = off[t];
        const TL_V w0 = TL_LOAD(wp + (size_t)t * TL_PT_OC);
        const TL_V w1 = TL_LOAD(wp + (size_t)t * TL_PT_OC + TL_VN);
        if (pf) {
            _mm_prefetch((const char *)(wp + (size_t)(t + PT_PF) * TL_PT_OC), _MM_HINT_T0);
            if (TL_PT_OC * 4 > 64)
                _mm_prefetch((const char *)(wp + (size_t)(t + PT_PF) * TL_PT_OC + 16),
                             _MM_HINT_T0);
        }
#define PT_FMA(p, xp)                                                                     \
    do {                                                                                  \
        const TL_V xv = TL_BCAST(xp + o);                                                 \
        acc[p][0] = TL_FMA(w0, xv, acc[p][0]);                                            \
        acc[p][1] = TL_FMA(w1, xv, acc[p][1]);                                            \
    } while (0)
        PT_FMA(0, x0);
        PT_FMA(1, x1);
        PT_FMA(2, x2);
        PT_FMA(3, x3);
        PT_FMA(4, x4);
        PT_FMA(5, x5);
#if TL_PT_POS > 6
        PT_FMA(6, x6);
        PT_FMA(7, x7);
#endif
#undef PT_FMA
    }
    const TL_V bv[2] = {TL_LOAD(b), TL_LOAD(b + TL_VN)};
    const TL_V sv[2] = {TL_LOAD(s), TL_LOAD(s + TL_VN)};
    /* Constant indices only: an accumulator indexed by a variable would live in memory
     * (GCC then stores all of them on every tap). */
    float out[TL_PT_POS][TL_PT_OC];
    for (int p = 0; p < TL_PT_POS; p++)
        for (int v = 0; v < 2; v++) {
            TL_V a = TL_ADD(acc[p][v], bv[v]);
            if (prelu)
                a = TL_PRELU(a, sv[v]);
            TL_STORE(out[p] + TL_VN * v, a);
        }
    for (int p = 0; p < npos; p++)
        for (int r = 0; r < nco; r++)
            ys[p][(size_t)r * oplane] = out[p][r];
}

/* A tile of one vector of channels (nco <= TL_VN stored) and PT_POS1 positions: the
 * last tile of a layer whose last channels fill at most half of a two-vector tile
 * (R-Net's conv2 on AVX-512: 48 channels, a tile of 32 and one of 16), the same 12
 * accumulators without the empty half. Each output is summed as by pt_tile: the same
 * bits. */
TL_INLINE void TL_NAME(pt_tile1)(const float *const *xs, int npos, const int *restrict off,
                                 int k, const float *restrict wp, const float *restrict b,
                                 const float *restrict s, int prelu, float *const *ys,
                                 size_t oplane, int nco)
{
    TL_V acc[PT_POS1];
    for (int p = 0; p < PT_POS1; p++)
        acc[p] = TL_ZERO();
    const float *x0 = xs[0], *x1 = xs[1], *x2 = xs[2], *x3 = xs[3], *x4 = xs[4],
                *x5 = xs[5], *x6 = xs[6], *x7 = xs[7], *x8 = xs[8], *x9 = xs[9],
                *x10 = xs[10], *x11 = xs[11];
    for (int t = 0; t < k; t++) {
        const int o = off[t];
        const TL_V w0 = TL_LOAD(wp + (size_t)t * TL_PT_OC);
#define PT_FMA1(p, xp) acc[p] = TL_FMA(w0, TL_BCAST(xp + o), acc[p])
        PT_FMA1(0, x0);
        PT_FMA1(1, x1);
        PT_FMA1(2, x2);
        PT_FMA1(3, x3);
        PT_FMA1(4, x4);
        PT_FMA1(5, x5);
        PT_FMA1(6, x6);
        PT_FMA1(7, x7);
        PT_FMA1(8, x8);
        PT_FMA1(9, x9);
        PT_FMA1(10, x10);
        PT_FMA1(11, x11);
#undef PT_FMA1
    }
    const TL_V bv = TL_LOAD(b), sv = TL_LOAD(s);
    float out[PT_POS1][TL_VN];
    for (int p = 0; p < PT_POS1; p++) {
        TL_V a = TL_ADD(acc[p], bv);
        if (prelu)
            a = TL_PRELU(a, sv);
        TL_STORE(out[p], a);
    }
    for (int p = 0; p < npos; p++)
        for (int r = 0; r < nco; r++)
            ys[p][(size_t)r * oplane] = out[p][r];
}

/* Images [0, n) of one chunk (input x, output y): every output position, in tiles. */
TL_TARGET DC_ASAN_OFF static void TL_NAME(pt_chunk)(const conv_geom *g, const float *x,
                                                    int n, const int *off, const float *wpk,
                                                    const float *b, const float *s,
                                                    int prelu, float *y)
{
    const size_t in_img = (size_t)g->c * g->h * g->w, out_img = (size_t)g->co * g->p;
    const int total = n * g->p;
    const int pf = (size_t)g->k * TL_PT_OC * sizeof(float) > PT_PF_PANEL;
    for (int oc = 0; oc < g->co; oc += TL_PT_OC) {
        const int nco = g->co - oc < TL_PT_OC ? g->co - oc : TL_PT_OC;
        const float *wp = wpk + (size_t)(oc / TL_PT_OC) * (size_t)g->k * TL_PT_OC;
        const int one = nco <= TL_VN, pos = one ? PT_POS1 : TL_PT_POS;
        int img = 0, oy = 0, ox = 0; /* the next position */
        for (int q = 0; q < total; q += pos) {
            const float *xs[PT_POS1];
            float *ys[PT_POS1];
            const int npos = total - q < pos ? total - q : pos;
            for (int p = 0; p < npos; p++) {
                xs[p] = x + img * in_img + (size_t)oy * g->sh * g->w + (size_t)ox * g->sw;
                ys[p] = y + img * out_img + (size_t)oc * g->p + (size_t)oy * g->ow + ox;
                if (++ox == g->ow) {
                    ox = 0;
                    if (++oy == g->oh) {
                        oy = 0;
                        img++;
                    }
                }
            }
            for (int p = npos; p < pos; p++)
                xs[p] = xs[0];
            if (one)
                TL_NAME(pt_tile1)(xs, npos, off, g->k, wp, b + oc, s + oc, prelu, ys,
                                  (size_t)g->p, nco);
            else if (pf) /* two copies, each with pf a constant */
                TL_NAME(pt_tile)(xs, npos, off, g->k, wp, b + oc, s + oc, prelu, ys,
                                 (size_t)g->p, nco, 1);
            else
                TL_NAME(pt_tile)(xs, npos, off, g->k, wp, b + oc, s + oc, prelu, ys,
                                 (size_t)g->p, nco, 0);
        }
    }
}

/* ---- Winograd F(2x2, 3x3), direct --------------------------------------------------
 *
 * P-Net's wide 3x3 layers (16 -> 32 and 10 -> 16 channels on rows of hundreds of
 * columns) in Winograd's minimal filtering: each 2x2 block of outputs from the 4x4
 * block of inputs under it, 16 multiply-adds per input and output channel instead of
 * 36 (nn_winograd.c has the algebra). nn_winograd.c runs its 16 products through
 * sgemm, which is slow at 10 or 16 input channels; here they run in registers: the
 * vectors run along blocks (one lane per 2x2 block of a row of blocks), so the input
 * transform is a stride-2 split of four input rows and the output transform an
 * interleave of two output rows, both without leaving the vector.
 *
 * One row of blocks (two output rows) at a time, TL_WT_NV vectors of blocks per pass:
 * the input transform writes V[e][ci][block] (e = 4 i + j, the 16 positions of the
 * transformed block) into vbuf, the products M[e][co] = sum over ci of U[e][ci][co]
 * V[e][ci] go TL_WT_CO output channels at a time into mbuf, and the output transform
 * adds the bias, applies PReLU and stores. Every output is computed in the same order
 * by every set (the transforms in the same expressions, each product summed over the
 * input channels from 0, one fused multiply-add each): the sets give the same bits. */
#define TL_WT_NV 2                   /* vectors of blocks per pass */
#define TL_WT_BLK (TL_VN * TL_WT_NV) /* blocks per pass */

/* The 16 transformed values of one input channel for TL_WT_NV vectors of blocks whose
 * first input column is cc0 (xc: the channel's first input row of the block row, of
 * which `rows` exist: the others read as zero), at vb + e * estride for each e. */
TL_INLINE void TL_NAME(wt_input)(const float *xc, int w, int rows, int cc0, int tail,
                                 float *vb, size_t estride)
{
    for (int v = 0; v < TL_WT_NV; v++) {
        const int cc = cc0 + 2 * TL_VN * v;
        TL_V t[4][4];
        for (int rr = 0; rr < 4; rr++) {
            TL_V d0, d1, d2, d3;
            if (rr >= rows) {
                d0 = d1 = d2 = d3 = TL_ZERO();
            } else {
                const float *xr = xc + (size_t)rr * (size_t)w + cc;
                TL_V lo, hi, lo2, hi2;
                if (tail) {
                    lo = TL_LOADM(xr, TL_TAIL(w - cc));
                    hi = TL_LOADM(xr + TL_VN, TL_TAIL(w - cc - TL_VN));
                    lo2 = TL_LOADM(xr + 2, TL_TAIL(w - cc - 2));
                    hi2 = TL_LOADM(xr + 2 + TL_VN, TL_TAIL(w - cc - 2 - TL_VN));
                } else {
                    lo = TL_LOAD(xr);
                    hi = TL_LOAD(xr + TL_VN);
                    lo2 = TL_LOAD(xr + 2);
                    hi2 = TL_LOAD(xr + 2 + TL_VN);
                }
                d0 = TL_EVEN(lo, hi);   /* column 2j of each block j */
                d1 = TL_ODD(lo, hi);    /* 2j + 1 */
                d2 = TL_EVEN(lo2, hi2); /* 2j + 2 */
                d3 = TL_ODD(lo2, hi2);  /* 2j + 3 */
            }
            /* d B */
            t[rr][0] = TL_SUB(d0, d2);
            t[rr][1] = TL_ADD(d1, d2);
            t[rr][2] = TL_SUB(d2, d1);
            t[rr][3] = TL_SUB(d1, d3);
        }
        /* B^T (d B) */
        for (int j = 0; j < 4; j++) {
            float *o = vb + (size_t)TL_VN * v;
            TL_STORE(o + (size_t)(0 + j) * estride, TL_SUB(t[0][j], t[2][j]));
            TL_STORE(o + (size_t)(4 + j) * estride, TL_ADD(t[1][j], t[2][j]));
            TL_STORE(o + (size_t)(8 + j) * estride, TL_SUB(t[2][j], t[1][j]));
            TL_STORE(o + (size_t)(12 + j) * estride, TL_SUB(t[1][j], t[3][j]));
        }
    }
}

/* The products of both Winograd kernels: M[e] = sum over ci of U[e][ci] V[e][ci] for
 * the TL_WT_CO output channels from o0 and the TL_WT_BLK blocks of a pass, for each of
 * the npos positions e (16 or 36): V in vbuf ([e][ci][block], estride floats per e),
 * U in u ([e][co / TL_WT_CO][c][TL_WT_CO]), M into mbuf ([e][TL_WT_CO][block]). Each
 * output summed over the input channels from 0, one fused multiply-add each. */
TL_INLINE void TL_NAME(wt_products)(const float *vbuf, const float *u, int c, int co, int o0,
                                    int npos, size_t estride, float *mbuf)
{
    for (int e = 0; e < npos; e++) {
        TL_V acc[TL_WT_CO][TL_WT_NV];
        for (int r = 0; r < TL_WT_CO; r++)
            for (int v = 0; v < TL_WT_NV; v++)
                acc[r][v] = TL_ZERO();
        const float *ve = vbuf + (size_t)e * estride;
        const float *ue = u + ((size_t)e * (size_t)co + o0) * (size_t)c;
        /* [ci][TL_WT_CO] from here: the group's weights of one input channel side by
         * side */
        for (int ci = 0; ci < c; ci++) {
            TL_V xv[TL_WT_NV];
            for (int v = 0; v < TL_WT_NV; v++)
                xv[v] = TL_LOAD(ve + (size_t)ci * TL_WT_BLK + TL_VN * v);
            for (int r = 0; r < TL_WT_CO; r++) {
                const TL_V wv = TL_BCAST(ue + (size_t)ci * TL_WT_CO + r);
                for (int v = 0; v < TL_WT_NV; v++)
                    acc[r][v] = TL_FMA(wv, xv[v], acc[r][v]);
            }
        }
        for (int r = 0; r < TL_WT_CO; r++)
            for (int v = 0; v < TL_WT_NV; v++)
                TL_STORE(mbuf + ((size_t)e * TL_WT_CO + r) * TL_WT_BLK + TL_VN * v, acc[r][v]);
    }
}

/* One image: x [c][h][w] -> y [co][oh][ow] (valid 3x3, stride 1), u the transformed
 * weights [16][co / TL_WT_CO][c][TL_WT_CO] (nn_winograd_weights, group TL_WT_CO), b
 * and s the bias and slope per output channel. vbuf holds 16 x c x TL_WT_BLK floats,
 * mbuf 16 x TL_WT_CO x TL_WT_BLK. */
TL_TARGET DC_ASAN_OFF static void TL_NAME(wt_image)(const conv_geom *g, const float *x,
                                                    const float *u, const float *b,
                                                    const float *s, int prelu, float *y,
                                                    float *vbuf, float *mbuf)
{
    const int w = g->w, c = g->c, co = g->co, oh = g->oh, ow = g->ow;
    const size_t plane = (size_t)g->h * (size_t)w, estride = (size_t)c * TL_WT_BLK;
    const int nbx = (ow + 1) / 2, nby = (oh + 1) / 2;
    for (int by = 0; by < nby; by++) {
        const int r0 = 2 * by, rows = g->h - r0 < 4 ? g->h - r0 : 4;
        for (int bx0 = 0; bx0 < nbx; bx0 += TL_WT_BLK) {
            const int c0 = 2 * bx0;
            const int tail = c0 + 2 * TL_WT_BLK + 2 > w;
            for (int ci = 0; ci < c; ci++)
                TL_NAME(wt_input)(x + (size_t)ci * plane + (size_t)r0 * (size_t)w, w, rows,
                                  c0, tail, vbuf + (size_t)ci * TL_WT_BLK, estride);
            for (int o0 = 0; o0 < co; o0 += TL_WT_CO) {
                TL_NAME(wt_products)(vbuf, u, c, co, o0, 16, estride, mbuf);
                /* A^T M A + bias, PReLU, the two output rows interleaved back */
                for (int r = 0; r < TL_WT_CO; r++) {
                    const TL_V bv = TL_SET1(b[o0 + r]), sv = TL_SET1(s[o0 + r]);
                    float *yc = y + (size_t)(o0 + r) * (size_t)g->p;
                    for (int v = 0; v < TL_WT_NV; v++) {
                        const int col = 2 * (bx0 + TL_VN * v);
                        if (col >= ow)
                            break;
                        TL_V m[4][4];
                        for (int e = 0; e < 16; e++)
                            m[e / 4][e % 4] = TL_LOAD(
                                mbuf + ((size_t)e * TL_WT_CO + r) * TL_WT_BLK + TL_VN * v);
                        TL_V sm[2][4];
                        for (int j = 0; j < 4; j++) {
                            sm[0][j] = TL_ADD(TL_ADD(m[0][j], m[1][j]), m[2][j]);
                            sm[1][j] = TL_SUB(TL_SUB(m[1][j], m[2][j]), m[3][j]);
                        }
                        for (int a = 0; a < 2 && r0 + a < oh; a++) {
                            TL_V y0 = TL_ADD(TL_ADD(sm[a][0], sm[a][1]), sm[a][2]);
                            TL_V y1 = TL_SUB(TL_SUB(sm[a][1], sm[a][2]), sm[a][3]);
                            y0 = TL_ADD(y0, bv);
                            y1 = TL_ADD(y1, bv);
                            if (prelu) {
                                y0 = TL_PRELU(y0, sv);
                                y1 = TL_PRELU(y1, sv);
                            }
                            float *yr = yc + (size_t)(r0 + a) * (size_t)ow + col;
                            const TL_V lo = TL_ZIPLO(y0, y1), hi = TL_ZIPHI(y0, y1);
                            if (col + 2 * TL_VN <= ow) {
                                TL_STORE(yr, lo);
                                TL_STORE(yr + TL_VN, hi);
                            } else {
                                TL_STOREM(yr, TL_TAIL(ow - col), lo);
                                TL_STOREM(yr + TL_VN, TL_TAIL(ow - col - TL_VN), hi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/* ---- Winograd F(4x4, 3x3), direct -------------------------------------------------
 *
 * The same layers as above (P-Net's conv2 and conv3) with 4x4 output blocks: 36
 * products per block and input and output channel instead of F(2x2)'s 4 x 16 = 64
 * (Lavin and Gray's F(4x4, 3x3); its transforms, B^T d B and A^T M A, have the
 * constants 4, 5, 2 and 8 and stay exact in float where they can). One lane per 4x4
 * block again: four vectors of a row hold TL_VN blocks of four columns, one block per
 * 128-bit quarter, and a 4x4 transpose inside each quarter (tr4) turns them into the
 * block's four columns, one vector each; its fifth and sixth are the next block's
 * first two, one permutation away (the last block's from one more load). The lanes
 * then hold the blocks in a shuffled order (block k * TL_VN / 4 + q in quarter q,
 * element k), the products do not care, and the same transpose on the output puts the
 * columns back in order. Every set computes each
 * output with the same operations in the same order (the transforms' expressions,
 * each product summed over the input channels from 0 by fused multiply-adds), so the
 * sets give the same bits; F(2x2) gives others, within rounding. */
#define TL_W4_NV TL_WT_NV   /* vectors of blocks per pass: F(2x2)'s (wt_products) */
#define TL_W4_BLK TL_WT_BLK /* blocks per pass */

/* o[t], quarter q, element k = (a, b, c, d)[k], quarter q, element t. */
TL_INLINE void TL_NAME(tr4)(TL_V a, TL_V b, TL_V c, TL_V d, TL_V o[4])
{
    const TL_V t0 = TL_UNPACKLO(a, b), t1 = TL_UNPACKLO(c, d);
    const TL_V t2 = TL_UNPACKHI(a, b), t3 = TL_UNPACKHI(c, d);
    o[0] = TL_SHUFLO(t0, t1);
    o[1] = TL_SHUFHI(t0, t1);
    o[2] = TL_SHUFLO(t2, t3);
    o[3] = TL_SHUFHI(t2, t3);
}

/* B^T applied to six values (six rows, or six columns): r = B^T d. */
TL_INLINE void TL_NAME(w4_bt)(const TL_V d[6], TL_V r[6])
{
    const TL_V four = TL_SET1(4.0f), m4 = TL_SET1(-4.0f), m5 = TL_SET1(-5.0f);
    r[0] = TL_FMA(four, d[0], TL_FMA(m5, d[2], d[4]));
    const TL_V a = TL_FMA(m4, d[2], d[4]), b = TL_FMA(m4, d[1], d[3]);
    r[1] = TL_ADD(a, b);
    r[2] = TL_SUB(a, b);
    const TL_V c = TL_SUB(d[4], d[2]), e1 = TL_SUB(d[3], d[1]), e = TL_ADD(e1, e1);
    r[3] = TL_ADD(c, e);
    r[4] = TL_SUB(c, e);
    r[5] = TL_FMA(four, d[1], TL_FMA(m5, d[3], d[5]));
}

/* A^T applied to six values: s = A^T m (four). */
TL_INLINE void TL_NAME(w4_at)(const TL_V m[6], TL_V s[4])
{
    const TL_V p = TL_ADD(m[1], m[2]), q = TL_SUB(m[1], m[2]);
    const TL_V u = TL_ADD(m[3], m[4]), v = TL_SUB(m[3], m[4]);
    s[0] = TL_ADD(TL_ADD(m[0], p), u);
    s[1] = TL_FMA(TL_SET1(2.0f), v, q);
    s[2] = TL_FMA(TL_SET1(4.0f), u, p);
    s[3] = TL_ADD(TL_FMA(TL_SET1(8.0f), v, q), m[5]);
}

/* The 36 transformed values of one input channel for TL_W4_NV vectors of blocks whose
 * first input column is cc0 (xc: the channel's first input row of the block row, of
 * which `rows` exist: the others read as zero; tail: the columns from w on read as
 * zero), at vb + e * estride for e = 6 i + j. */
TL_INLINE void TL_NAME(w4_input)(const float *xc, int w, int rows, int cc0, int tail,
                                 float *vb, size_t estride)
{
    for (int v = 0; v < TL_W4_NV; v++) {
        const int cc = cc0 + 4 * TL_VN * v;
        TL_V t[6][6]; /* d B of each input row */
        for (int rr = 0; rr < 6; rr++) {
            TL_V d[6];
            if (rr >= rows) {
                for (int j = 0; j < 6; j++)
                    d[j] = TL_ZERO();
            } else {
                const float *xr = xc + (size_t)rr * (size_t)w + cc;
                TL_V l[4], o[4];
                for (int k = 0; k < 4; k++) {
                    const int at = TL_VN * k;
                    l[k] = tail ? TL_LOADM(xr + at, TL_TAIL(w - cc - at)) : TL_LOAD(xr + at);
                }
                /* the two columns after the vector's last block */
                const TL_V e = TL_LOADM(xr + 4 * TL_VN, TL_TAIL(tail ? w - cc - 4 * TL_VN : 2));
                TL_NAME(tr4)(l[0], l[1], l[2], l[3], o);
                for (int j = 0; j < 4; j++)
                    d[j] = o[j];
                /* columns 4 and 5 of a block are columns 0 and 1 of the next */
                d[4] = TL_NEXT0(o[0], e);
                d[5] = TL_NEXT1(o[1], e);
            }
            TL_NAME(w4_bt)(d, t[rr]);
        }
        for (int j = 0; j < 6; j++) {
            const TL_V col[6] = {t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j]};
            TL_V r[6];
            TL_NAME(w4_bt)(col, r);
            for (int i = 0; i < 6; i++)
                TL_STORE(vb + (size_t)(6 * i + j) * estride + (size_t)TL_VN * v, r[i]);
        }
    }
}

/* One image: x [c][h][w] -> y [co][oh][ow] (valid 3x3, stride 1), u the transformed
 * weights [36][co / TL_WT_CO][c][TL_WT_CO] (nn_winograd4_weights, group TL_WT_CO), b
 * and s the bias and slope per output channel. vbuf holds 36 x c x TL_W4_BLK floats,
 * mbuf 36 x TL_WT_CO x TL_W4_BLK. */
TL_TARGET DC_ASAN_OFF static void TL_NAME(w4_image)(const conv_geom *g, const float *x,
                                                    const float *u, const float *b,
                                                    const float *s, int prelu, float *y,
                                                    float *vbuf, float *mbuf)
{
    const int w = g->w, c = g->c, co = g->co, oh = g->oh, ow = g->ow;
    const size_t plane = (size_t)g->h * (size_t)w, estride = (size_t)c * TL_W4_BLK;
    const int nbx = (ow + 3) / 4, nby = (oh + 3) / 4;
    for (int by = 0; by < nby; by++) {
        const int r0 = 4 * by, rows = g->h - r0 < 6 ? g->h - r0 : 6;
        for (int bx0 = 0; bx0 < nbx; bx0 += TL_W4_BLK) {
            const int c0 = 4 * bx0;
            /* the last block's input reaches 4 * TL_W4_BLK + 1 columns on */
            const int tail = c0 + 4 * TL_W4_BLK + 2 > w;
            for (int ci = 0; ci < c; ci++)
                TL_NAME(w4_input)(x + (size_t)ci * plane + (size_t)r0 * (size_t)w, w, rows,
                                  c0, tail, vbuf + (size_t)ci * TL_W4_BLK, estride);
            for (int o0 = 0; o0 < co; o0 += TL_WT_CO) {
                TL_NAME(wt_products)(vbuf, u, c, co, o0, 36, estride, mbuf);
                /* A^T M A + bias, PReLU, the blocks' columns put back in order */
                for (int r = 0; r < TL_WT_CO; r++) {
                    const TL_V bv = TL_SET1(b[o0 + r]), sv = TL_SET1(s[o0 + r]);
                    float *yc = y + (size_t)(o0 + r) * (size_t)g->p;
                    for (int v = 0; v < TL_W4_NV; v++) {
                        const int col = 4 * (bx0 + TL_VN * v);
                        if (col >= ow)
                            break;
                        TL_V t[4][6]; /* A^T M: output row a, transformed column j */
                        for (int j = 0; j < 6; j++) {
                            TL_V m[6], sa[4];
                            for (int i = 0; i < 6; i++)
                                m[i] = TL_LOAD(mbuf + ((size_t)(6 * i + j) * TL_WT_CO + r) *
                                                          TL_W4_BLK +
                                               TL_VN * v);
                            TL_NAME(w4_at)(m, sa);
                            for (int a = 0; a < 4; a++)
                                t[a][j] = sa[a];
                        }
                        for (int a = 0; a < 4 && r0 + a < oh; a++) {
                            TL_V yv[4], o[4];
                            TL_NAME(w4_at)(t[a], yv);
                            for (int k = 0; k < 4; k++) {
                                yv[k] = TL_ADD(yv[k], bv);
                                if (prelu)
                                    yv[k] = TL_PRELU(yv[k], sv);
                            }
                            TL_NAME(tr4)(yv[0], yv[1], yv[2], yv[3], o);
                            float *yr = yc + (size_t)(r0 + a) * (size_t)ow + col;
                            if (col + 4 * TL_VN <= ow) {
                                for (int k = 0; k < 4; k++)
                                    TL_STORE(yr + TL_VN * k, o[k]);
                            } else {
                                for (int k = 0; k < 4; k++)
                                    TL_STOREM(yr + TL_VN * k, TL_TAIL(ow - col - TL_VN * k),
                                              o[k]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/* ---- Winograd F(2x2, 3x3) through sgemm: the transforms -----------------------------
 *
 * nn_winograd.c runs the backbone's 3x3 layers (32 to 128 channels) as 16 sgemms on
 * transformed blocks; these are its input and output transforms, one lane per 2x2
 * block as above. They compute the portable loops' expressions in the same order
 * (down the four input rows first, then across), so every set gives the portable
 * path's bits. */

/* One input channel of a run of `run` blocks: in holds the four input rows under
 * the run (row r at in + r * width, cols = 2 * run + 2 floats each, padding already
 * zero); V[4 i + j] for block b goes to v[(4 i + j) * es + b]. */
TL_TARGET DC_ASAN_OFF static void TL_NAME(wg_input)(const float *in, int width, int run,
                                                    float *v, size_t es)
{
    const int cols = 2 * run + 2;
    for (int j0 = 0; j0 < run; j0 += TL_VN) {
        const int c0 = 2 * j0;
        const TL_MASK m = TL_TAIL(run - j0);
        const TL_MASK mlo = TL_TAIL(cols - c0), mhi = TL_TAIL(cols - c0 - TL_VN);
        const TL_MASK mlo2 = TL_TAIL(cols - c0 - 2), mhi2 = TL_TAIL(cols - c0 - 2 - TL_VN);
        /* d[row][0..3]: columns c0.., c0 + TL_VN.., c0 + 2.., c0 + 2 + TL_VN.. */
        TL_V d[4][4];
        for (int r = 0; r < 4; r++) {
            const float *ir = in + (size_t)r * (size_t)width + c0;
            d[r][0] = TL_LOADM(ir, mlo);
            d[r][1] = TL_LOADM(ir + TL_VN, mhi);
            d[r][2] = TL_LOADM(ir + 2, mlo2);
            d[r][3] = TL_LOADM(ir + 2 + TL_VN, mhi2);
        }
        for (int r = 0; r < 4; r++) {
            /* B^T d, row r */
            TL_V t[4];
            for (int k = 0; k < 4; k++)
                t[k] = r == 0   ? TL_SUB(d[0][k], d[2][k])
                       : r == 1 ? TL_ADD(d[1][k], d[2][k])
                       : r == 2 ? TL_SUB(d[2][k], d[1][k])
                                : TL_SUB(d[1][k], d[3][k]);
            const TL_V a = TL_EVEN(t[0], t[1]);  /* column 2j of each block j */
            const TL_V bb = TL_ODD(t[0], t[1]);  /* 2j + 1 */
            const TL_V c = TL_EVEN(t[2], t[3]);  /* 2j + 2 */
            const TL_V dd = TL_ODD(t[2], t[3]);  /* 2j + 3 */
            float *o = v + (size_t)(4 * r) * es + j0;
            TL_STOREM(o, m, TL_SUB(a, c));
            TL_STOREM(o + es, m, TL_ADD(bb, c));
            TL_STOREM(o + 2 * es, m, TL_SUB(c, bb));
            TL_STOREM(o + 3 * es, m, TL_SUB(bb, dd));
        }
    }
}

/* The outputs of a run of `run` blocks for co output channels: channel o's products
 * M[e] for block b at m[e * es + o * ld + b], A^T M A + bias[o] (bias may be NULL)
 * into the output rows y0 + o * plane (and the row below, when two_rows), of which the
 * first ncols columns exist (2 * run, or one fewer when the last block is cut off). */
TL_TARGET DC_ASAN_OFF static void TL_NAME(wg_output)(const float *m, size_t es, size_t ld,
                                                     int co, const float *bias, int run,
                                                     int ncols, int two_rows, float *y0,
                                                     size_t plane, int ow)
{
    for (int o = 0; o < co; o++) {
        const float *s = m + (size_t)o * ld;
        const TL_V bv = TL_SET1(bias ? bias[o] : 0.0f);
        float *yo = y0 + (size_t)o * plane;
        for (int j0 = 0; j0 < run; j0 += TL_VN) {
            const TL_MASK mk = TL_TAIL(run - j0);
            TL_V r0[4], r1[4];
            for (int q = 0; q < 4; q++) {
                const TL_V m0 = TL_LOADM(s + (size_t)q * es + j0, mk);
                const TL_V m1 = TL_LOADM(s + (size_t)(4 + q) * es + j0, mk);
                const TL_V m2 = TL_LOADM(s + (size_t)(8 + q) * es + j0, mk);
                const TL_V m3 = TL_LOADM(s + (size_t)(12 + q) * es + j0, mk);
                r0[q] = TL_ADD(TL_ADD(m0, m1), m2);
                r1[q] = TL_SUB(TL_SUB(m1, m2), m3);
            }
            const int n = ncols - 2 * j0;
            const TL_MASK lo = TL_TAIL(n), hi = TL_TAIL(n - TL_VN);
            for (int row = 0; row < 1 + (two_rows != 0); row++) {
                const TL_V *rr = row ? r1 : r0;
                const TL_V ev = TL_ADD(TL_ADD(TL_ADD(rr[0], rr[1]), rr[2]), bv);
                const TL_V od = TL_ADD(TL_SUB(TL_SUB(rr[1], rr[2]), rr[3]), bv);
                float *y = yo + (size_t)row * (size_t)ow + 2 * j0;
                TL_STOREM(y, lo, TL_ZIPLO(ev, od));
                TL_STOREM(y + TL_VN, hi, TL_ZIPHI(ev, od));
            }
        }
    }
}

/* The kernel widths with their own code (constants inlined), for each tile height;
 * 3x3 has both sides constant, so its 9 taps unroll. */
#define TL_IMAGE(name, kh, kw, noc)                                                       \
    TL_TARGET DC_ASAN_OFF static void TL_NAME(name)(const conv_geom *g, const float *x,   \
                                                    const float *wpk, const float *b,     \
                                                    const float *s, int prelu, float *y,  \
                                                    int flat)                             \
    {                                                                                     \
        TL_NAME(dc_image)(g, x, wpk, b, s, prelu, y, flat, kh, kw, noc);                  \
    }
#define TL_IMAGES(sfx, noc)                                                               \
    TL_IMAGE(dc_image_k1##sfx, g->kh, 1, noc)                                             \
    TL_IMAGE(dc_image_k2##sfx, g->kh, 2, noc)                                             \
    TL_IMAGE(dc_image_k3##sfx, 3, 3, noc)                                                 \
    TL_IMAGE(dc_image_kn##sfx, g->kh, g->kw, noc)
#define TL_TABLE(sfx, noc)                                                                \
    {(noc),                                                                               \
     {TL_NAME(dc_image_k1##sfx), TL_NAME(dc_image_k2##sfx), TL_NAME(dc_image_k3##sfx),    \
      TL_NAME(dc_image_kn##sfx)}}
TL_IMAGES(_4, 4)
TL_IMAGES(_5, 5)
#ifdef TL_DC_OC_WIDE
TL_IMAGES(_w, TL_DC_OC_WIDE)
#endif

static const dc_kernels TL_NAME(kernels) = {
    TL_PT_OC,
    TL_NAME(pt_chunk),
    TL_NAME(wt_image),
    TL_NAME(w4_image),
    TL_WT_CO,
    TL_NAME(wg_input),
    TL_NAME(wg_output),
#ifdef TL_DC_OC_WIDE
    {TL_TABLE(_4, 4), TL_TABLE(_5, 5), TL_TABLE(_w, TL_DC_OC_WIDE)},
    {TL_NAME(dp_image_4), TL_NAME(dp_image_5), TL_NAME(dp_image_w)},
#else
    {TL_TABLE(_4, 4), TL_TABLE(_5, 5), TL_TABLE(_4, 4)},
    {TL_NAME(dp_image_4), TL_NAME(dp_image_5), TL_NAME(dp_image_4)},
#endif
};
#undef TL_IMAGE
#undef TL_IMAGES
#undef TL_TABLE

#undef TL_DC_NV
#undef TL_COLS
#undef TL_OC_MAX
#undef TL_PT_OC
#undef TL_WT_NV
#undef TL_WT_BLK
#undef TL_W4_NV
#undef TL_W4_BLK
#undef TL_INLINE
/* the includer's macros: the next set defines its own */
#undef TL_NAME
#undef TL_TARGET
#undef TL_V
#undef TL_VN
#undef TL_MASK
#undef TL_TAIL
#undef TL_ZERO
#undef TL_SET1
#undef TL_BCAST
#undef TL_LOAD
#undef TL_LOADM
#undef TL_STORE
#undef TL_STOREM
#undef TL_ADD
#undef TL_FMA
#undef TL_PRELU
#undef TL_SUB
#undef TL_EVEN
#undef TL_ODD
#undef TL_ZIPLO
#undef TL_ZIPHI
#undef TL_UNPACKLO
#undef TL_UNPACKHI
#undef TL_SHUFLO
#undef TL_SHUFHI
#undef TL_NEXT0
#undef TL_MAX
#undef TL_KEEP
#undef TL_NEXT1
#undef TL_WT_CO
#undef TL_PT_POS
#undef TL_DC_OC_WIDE
