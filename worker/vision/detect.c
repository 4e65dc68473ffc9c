/* detect.c - the MTCNN face detector behind detect.h: C builders for P-Net, R-Net and
 * O-Net over the engine's operations (nn.h), and the detection pipeline around them
 * (pyramid, strips, crops, NMS, regression, landmarks).
 *
 * It exists so that detection follows tests/reference/mtcnn_ref.py exactly while
 * allocating nothing per image. The networks' tensors are looked up by name in the
 * mapped model files with their shapes checked once at open; activations live in two
 * ping-pong buffers (each layer reads one and writes the other), and candidate boxes
 * in fixed-capacity buffers, all carved out of one arena whose size a measuring run
 * of the worst case (widest P-Net strip, full R-Net and O-Net chunks) determines.
 *
 * Exactness: geometry is double precision in the reference's order of operations;
 * pixel sampling and input normalisation are float32 in the reference's formula
 * order; scores are computed in double from the float32 logits and rounded to
 * float32. Only the convolutions' summation order differs from numpy.
 */
#include "facemill/clock.h"
#include "facemill/detect.h"
#include "facemill/clock.h"
#include "facemill/model.h"
#include "facemill/nn.h"
#include "detect-impl.h"

#include <limits.h>
#include <math.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================================
 * Box arithmetic (detect-impl.h)
 * ============================================================================== */

static double dmin(double a, double b)
{
    return b < a ? b : a;
}

static double dmax(double a, double b)
{
    return b > a ? b : a;
}

double fm_mtcnn_overlap(const double a[4], const double b[4], fm_mtcnn_nms_mode mode)
{
    double iw = dmin(a[2], b[2]) - dmax(a[0], b[0]);
    double ih = dmin(a[3], b[3]) - dmax(a[1], b[1]);
    double inter = dmax(0.0, iw) * dmax(0.0, ih);
    double area_a = (a[2] - a[0]) * (a[3] - a[1]);
    double area_b = (b[2] - b[0]) * (b[3] - b[1]);
    double den = mode == FM_MTCNN_NMS_MIN ? dmin(area_a, area_b) : area_a + area_b - inter;
    return den > 0 ? inter / den : 0.0;
}

/* 1 when candidate i goes before candidate j: higher score, or equal score and lower
 * index. A total order, so any correct sort gives the stable order. */
static int score_before(const fm_mtcnn_cand *c, int i, int j)
{
    return c[i].score > c[j].score || (c[i].score == c[j].score && i < j);
}

/* Sorts the n indices in order (into c) by score, stably. */
static void sort_order(const fm_mtcnn_cand *c, int n, int *order, int *tmp)
{
    /* Bottom-up merge sort: order <-> tmp, runs doubling. */
    int *src = order, *dst = tmp;
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n;
            int hi = lo + 2 * width < n ? lo + 2 * width : n;
            int a = lo, b = mid, k = lo;
            while (a < mid && b < hi)
                dst[k++] = score_before(c, src[b], src[a]) ? src[b++] : src[a++];
            while (a < mid)
                dst[k++] = src[a++];
            while (b < hi)
                dst[k++] = src[b++];
        }
        int *t = src;
        src = dst;
        dst = t;
    }
    if (src != order)
        memcpy(order, src, (size_t)n * sizeof *order);
}

void fm_mtcnn_sort_by_score(const fm_mtcnn_cand *c, int n, int *order, int *tmp)
{
    for (int i = 0; i < n; i++)
        order[i] = i;
    sort_order(c, n, order, tmp);
}

/* Greedy NMS over the candidates c[order[0..m)], order sorted by score (best first);
 * keep[] receives the kept indices into c. */
static int nms_sorted(const fm_mtcnn_cand *c, int m, const int *order, double threshold,
                      fm_mtcnn_nms_mode mode, int *keep, unsigned char *flag)
{
    for (int a = 0; a < m; a++) /* (a memset here draws a false -Wstringop-overflow) */
        flag[a] = 0;
    int kept = 0;
    for (int a = 0; a < m; a++) {
        if (flag[a])
            continue;
        int i = order[a];
        for (int b = a + 1; b < m; b++) {
            if (!flag[b] && fm_mtcnn_overlap(c[i].box, c[order[b]].box, mode) > threshold)
                flag[b] = 1;
        }
        keep[kept++] = i; /* kept <= a, so keep may alias order */
    }
    return kept;
}

/* Greedy NMS over the candidates of c[0..n) whose score is above min_score: exactly
 * fm_mtcnn_nms on an array of those candidates alone (in the same order), with keep[]
 * indexing c. */
static int nms_above(const fm_mtcnn_cand *c, int n, double min_score, double threshold,
                     fm_mtcnn_nms_mode mode, int *keep, int *order, int *tmp,
                     unsigned char *flag)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        if ((double)c[i].score > min_score)
            order[m++] = i;
    if (m <= 0)
        return 0;
    sort_order(c, m, order, tmp);
    return nms_sorted(c, m, order, threshold, mode, keep, flag);
}

int fm_mtcnn_nms(const fm_mtcnn_cand *c, int n, double threshold, fm_mtcnn_nms_mode mode,
                 int *keep, int *order, int *tmp, unsigned char *flag)
{
    if (n <= 0)
        return 0;
    fm_mtcnn_sort_by_score(c, n, order, tmp);
    return nms_sorted(c, n, order, threshold, mode, keep, flag);
}

void fm_mtcnn_regress(double box[4], const float reg[4])
{
    double w = box[2] - box[0];
    double h = box[3] - box[1];
    box[0] = box[0] + (double)reg[0] * w;
    box[1] = box[1] + (double)reg[1] * h;
    box[2] = box[2] + (double)reg[2] * w;
    box[3] = box[3] + (double)reg[3] * h;
}

int fm_mtcnn_square(double box[4])
{
    double w = box[2] - box[0];
    double h = box[3] - box[1];
    double l = w > h ? w : h;
    if (isnan(w) || isnan(h))
        l = NAN;
    double cx = box[0] + w * 0.5;
    double cy = box[1] + h * 0.5;
    box[0] = cx - l * 0.5;
    box[1] = cy - l * 0.5;
    box[2] = cx + l * 0.5;
    box[3] = cy + l * 0.5;
    for (int k = 0; k < 4; k++)
        if (!isfinite(box[k]))
            return 0;
    return l > 0;
}

int fm_mtcnn_scales(int w, int h, double min_face, double factor, double max_side,
                    double *scales, int cap)
{
    if (!(min_face > 0) || !(factor > 0 && factor < 1))
        return -1;
    double s = 12.0 / min_face;
    if (max_side > 0) {
        double m = max_side / (double)(w > h ? w : h);
        if (m < s)
            s = m;
    }
    double short_side = (double)(w < h ? w : h);
    int n = 0;
    while (short_side * s >= 12) {
        if (n < cap)
            scales[n] = s;
        n++;
        s = s * factor;
    }
    return n;
}

int fm_mtcnn_first_level(const double *scales, int n, double min_search)
{
    int k = 0;
    if (!(min_search > 0))
        return 0;
    while (k + 1 < n && 12.0 / scales[k + 1] <= min_search * (1 + 1e-9))
        k++;
    return k;
}

int fm_mtcnn_pnet_out(int h)
{
    if (h < 12)
        return 0;
    return (h - 2 + 1) / 2 - 4;
}

/* ---- bounded best-candidates buffer -------------------------------------------- */

/* 1 when a is worse than b: lower score, or equal score and later arrival. */
static int cand_worse(const fm_mtcnn_cand *a, const fm_mtcnn_cand *b)
{
    return a->score < b->score || (a->score == b->score && a->seq > b->seq);
}

static void heap_sift_down(fm_mtcnn_cand *c, int n, int i,
                           int (*before)(const fm_mtcnn_cand *, const fm_mtcnn_cand *))
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && before(&c[l], &c[m]))
            m = l;
        if (r < n && before(&c[r], &c[m]))
            m = r;
        if (m == i)
            return;
        fm_mtcnn_cand t = c[i];
        c[i] = c[m];
        c[m] = t;
        i = m;
    }
}

void fm_mtcnn_topk_init(fm_mtcnn_topk *k, fm_mtcnn_cand *c, int cap)
{
    k->c = c;
    k->n = 0;
    k->cap = cap;
    k->heap = 0;
    k->dropped = 0;
}

void fm_mtcnn_topk_push(fm_mtcnn_topk *k, const fm_mtcnn_cand *cand)
{
    if (k->n < k->cap) {
        k->c[k->n++] = *cand;
        return;
    }
    k->dropped++;
    if (k->cap < 1)
        return;
    if (!k->heap) { /* min-heap on quality: the worst candidate at the root */
        for (int i = k->n / 2 - 1; i >= 0; i--)
            heap_sift_down(k->c, k->n, i, cand_worse);
        k->heap = 1;
    }
    if (cand_worse(&k->c[0], cand)) {
        k->c[0] = *cand;
        heap_sift_down(k->c, k->n, 0, cand_worse);
    }
}

static int seq_after(const fm_mtcnn_cand *a, const fm_mtcnn_cand *b)
{
    return a->seq > b->seq;
}

void fm_mtcnn_topk_finish(fm_mtcnn_topk *k)
{
    if (!k->heap)
        return;
    /* Heap sort by seq, in place: a max-heap on seq, then pop to the back. */
    int n = k->n;
    for (int i = n / 2 - 1; i >= 0; i--)
        heap_sift_down(k->c, n, i, seq_after);
    for (int end = n - 1; end > 0; end--) {
        fm_mtcnn_cand t = k->c[0];
        k->c[0] = k->c[end];
        k->c[end] = t;
        heap_sift_down(k->c, end, 0, seq_after);
    }
    k->heap = 0;
}

/* ================================================================================
 * Networks
 * ============================================================================== */

typedef struct tensor_spec {
    const char *name;
    unsigned ndim;
    uint64_t dims[4];
} tensor_spec;

#define NET_MAX_TENSORS 24

typedef struct mtcnn_net {
    fm_model *model;
    const char *arch;
    float mean[3], scale[3];
    fm_tensor t[NET_MAX_TENSORS];
    /* P-Net: conv4_1 (2 face logits) and conv4_2 (4 box offsets) stacked into one 1x1
     * convolution of 6 outputs, so the 32-channel maps are read once; a 1x1
     * convolution sums each output on its own, so the results are the same bits. */
    float head_w[6 * 32], head_b[6];
    fm_tensor head_wt, head_bt;
} mtcnn_net;

enum {
    P_C1W, P_C1B, P_A1, P_C2W, P_C2B, P_A2, P_C3W, P_C3B, P_A3,
    P_C41W, P_C41B, P_C42W, P_C42B, P_COUNT
};
static const tensor_spec pnet_spec[P_COUNT] = {
    [P_C1W] = {"conv1.weight", 4, {10, 3, 3, 3}},   [P_C1B] = {"conv1.bias", 1, {10}},
    [P_A1] = {"prelu1.alpha", 1, {10}},             [P_C2W] = {"conv2.weight", 4, {16, 10, 3, 3}},
    [P_C2B] = {"conv2.bias", 1, {16}},              [P_A2] = {"prelu2.alpha", 1, {16}},
    [P_C3W] = {"conv3.weight", 4, {32, 16, 3, 3}},  [P_C3B] = {"conv3.bias", 1, {32}},
    [P_A3] = {"prelu3.alpha", 1, {32}},             [P_C41W] = {"conv4_1.weight", 4, {2, 32, 1, 1}},
    [P_C41B] = {"conv4_1.bias", 1, {2}},            [P_C42W] = {"conv4_2.weight", 4, {4, 32, 1, 1}},
    [P_C42B] = {"conv4_2.bias", 1, {4}},
};

enum {
    R_C1W, R_C1B, R_A1, R_C2W, R_C2B, R_A2, R_C3W, R_C3B, R_A3, R_D4W, R_D4B, R_A4,
    R_D51W, R_D51B, R_D52W, R_D52B, R_COUNT
};
static const tensor_spec rnet_spec[R_COUNT] = {
    [R_C1W] = {"conv1.weight", 4, {28, 3, 3, 3}},   [R_C1B] = {"conv1.bias", 1, {28}},
    [R_A1] = {"prelu1.alpha", 1, {28}},             [R_C2W] = {"conv2.weight", 4, {48, 28, 3, 3}},
    [R_C2B] = {"conv2.bias", 1, {48}},              [R_A2] = {"prelu2.alpha", 1, {48}},
    [R_C3W] = {"conv3.weight", 4, {64, 48, 2, 2}},  [R_C3B] = {"conv3.bias", 1, {64}},
    [R_A3] = {"prelu3.alpha", 1, {64}},             [R_D4W] = {"conv4.weight", 2, {128, 576}},
    [R_D4B] = {"conv4.bias", 1, {128}},             [R_A4] = {"prelu4.alpha", 1, {128}},
    [R_D51W] = {"conv5_1.weight", 2, {2, 128}},     [R_D51B] = {"conv5_1.bias", 1, {2}},
    [R_D52W] = {"conv5_2.weight", 2, {4, 128}},     [R_D52B] = {"conv5_2.bias", 1, {4}},
};

enum {
    O_C1W, O_C1B, O_A1, O_C2W, O_C2B, O_A2, O_C3W, O_C3B, O_A3, O_C4W, O_C4B, O_A4,
    O_D5W, O_D5B, O_A5, O_D61W, O_D61B, O_D62W, O_D62B, O_D63W, O_D63B, O_COUNT
};
static const tensor_spec onet_spec[O_COUNT] = {
    [O_C1W] = {"conv1.weight", 4, {32, 3, 3, 3}},   [O_C1B] = {"conv1.bias", 1, {32}},
    [O_A1] = {"prelu1.alpha", 1, {32}},             [O_C2W] = {"conv2.weight", 4, {64, 32, 3, 3}},
    [O_C2B] = {"conv2.bias", 1, {64}},              [O_A2] = {"prelu2.alpha", 1, {64}},
    [O_C3W] = {"conv3.weight", 4, {64, 64, 3, 3}},  [O_C3B] = {"conv3.bias", 1, {64}},
    [O_A3] = {"prelu3.alpha", 1, {64}},             [O_C4W] = {"conv4.weight", 4, {128, 64, 2, 2}},
    [O_C4B] = {"conv4.bias", 1, {128}},             [O_A4] = {"prelu4.alpha", 1, {128}},
    [O_D5W] = {"conv5.weight", 2, {256, 1152}},     [O_D5B] = {"conv5.bias", 1, {256}},
    [O_A5] = {"prelu5.alpha", 1, {256}},            [O_D61W] = {"conv6_1.weight", 2, {2, 256}},
    [O_D61B] = {"conv6_1.bias", 1, {2}},            [O_D62W] = {"conv6_2.weight", 2, {4, 256}},
    [O_D62B] = {"conv6_2.bias", 1, {4}},            [O_D63W] = {"conv6_3.weight", 2, {10, 256}},
    [O_D63B] = {"conv6_3.bias", 1, {10}},
};

/* Opens dir/file, checks the architecture, normalisation and input size, and binds
 * every tensor of spec (checked shapes) into net->t. */
static fm_status net_open(mtcnn_net *net, const char *dir, const char *file,
                          const char *arch, int input_size, const tensor_spec *spec,
                          int count, fm_error *err)
{
    char path[4096];
    int len = snprintf(path, sizeof path, "%s/%s", dir, file);
    if (len < 0 || (size_t)len >= sizeof path)
        return fm_error_set(err, FM_ERR_INVALID, "models directory path is too long");
    fm_status st = fm_model_open(&net->model, path, 0, err);
    if (st) {
        if (st == FM_ERR_IO)
            fm_error_prefix(err, "MTCNN model (run models/fetch, or set models.dir)");
        return st;
    }
    net->arch = arch;
    const char *a = NULL;
    st = fm_model_meta_str(net->model, "general.architecture", &a, NULL, err);
    if (st) {
        fm_error_prefix(err, "%s: general.architecture", path);
        return st;
    }
    if (strcmp(a, arch) != 0)
        return fm_error_set(err, FM_ERR_FORMAT, "%s: architecture '%s', expected '%s'",
                            path, a, arch);
    const char *keys[2] = {"input.mean", "input.scale"};
    float *dst[2] = {net->mean, net->scale};
    for (int k = 0; k < 2; k++) {
        const double *v = NULL;
        size_t n = 0;
        st = fm_model_meta_f64_array(net->model, keys[k], &v, &n, err);
        if (st) {
            fm_error_prefix(err, "%s: %s", path, keys[k]);
            return st;
        }
        if (n != 3)
            return fm_error_set(err, FM_ERR_FORMAT, "%s: %s has %zu values, expected 3",
                                path, keys[k], n);
        for (int c = 0; c < 3; c++) {
            if (!isfinite(v[c]) || (k == 1 && v[c] == 0))
                return fm_error_set(err, FM_ERR_FORMAT, "%s: %s[%d] = %g is not usable",
                                    path, keys[k], c, v[c]);
            dst[k][c] = (float)v[c];
        }
    }
    if (input_size > 0) {
        /* Optional: checked when present. */
        const int64_t *v = NULL;
        size_t n = 0;
        fm_error e = {0};
        st = fm_model_meta_i64_array(net->model, "input.size", &v, &n, &e);
        if (st == FM_OK && (n != 2 || v[0] != input_size || v[1] != input_size))
            return fm_error_set(err, FM_ERR_FORMAT, "%s: input.size is not [%d, %d]", path,
                                input_size, input_size);
        if (st != FM_OK && st != FM_ERR_NOT_FOUND)
            return fm_error_set(err, st, "%s: input.size: %s", path, fm_error_text(&e));
    }
    for (int i = 0; i < count; i++) {
        const float *data = NULL;
        st = fm_model_tensor_expect(net->model, spec[i].name, spec[i].ndim, spec[i].dims,
                                    &data, err);
        if (st)
            return st; /* the message names the file and the tensor */
        const uint64_t *d = spec[i].dims;
        int n = (int)d[0];
        int c = spec[i].ndim >= 2 ? (int)d[1] : 1;
        int h = spec[i].ndim >= 3 ? (int)d[2] : 1;
        int w = spec[i].ndim >= 4 ? (int)d[3] : 1;
        /* Inputs are never written by the engine: the cast is safe. */
        net->t[i] = fm_tensor_make(n, c, h, w, (float *)data);
    }
    return FM_OK;
}

/* ---- activation buffers -------------------------------------------------------- */

/* Two ping-pong buffers for activations. In sizing mode views record how large each
 * must be; otherwise a view beyond a buffer's capacity is a bug (FM_ERR_INTERNAL). */
typedef struct act_bufs {
    float *buf[2];   /* NULL when measuring */
    size_t cap[2];   /* floats */
    int sizing;
} act_bufs;

enum { BUF_X = 0, BUF_Y = 1 };

/* A view [n, c, h, w] at offset floats into buffer which. */
static fm_status act_view(act_bufs *b, int which, size_t offset, int n, int c, int h,
                          int w, fm_tensor *t, fm_error *err)
{
    size_t need = offset + (size_t)n * (size_t)c * (size_t)h * (size_t)w;
    if (b->sizing) {
        if (need > b->cap[which])
            b->cap[which] = need;
    } else if (need > b->cap[which]) {
        return fm_error_set(err, FM_ERR_INTERNAL,
                            "detector: activation [%d, %d, %d, %d] exceeds buffer %d (%zu "
                            "floats)", n, c, h, w, which, b->cap[which]);
    }
    *t = fm_tensor_make(n, c, h, w, b->buf[which] ? b->buf[which] + offset : NULL);
    return FM_OK;
}

/* conv (valid, stride 1) + bias + PReLU: x -> buffer `to` at offset 0. */
static fm_status conv_prelu(fm_arena *a, act_bufs *b, const fm_tensor *x, int to,
                            const fm_tensor *w, const fm_tensor *bias, const fm_tensor *alpha,
                            fm_tensor *y, fm_error *err)
{
    fm_conv2d_params p = fm_conv2d_sym(1, 0);
    fm_tensor s;
    fm_status st = fm_nn_conv2d_shape(x, w, &p, &s, err);
    if (!st)
        st = act_view(b, to, 0, s.n, s.c, s.h, s.w, y, err);
    if (!st)
        st = fm_nn_conv2d_prelu(a, x, w, bias, alpha, &p, y, err);
    return st;
}

/* conv (valid, stride 1) + bias + PReLU + max pooling k/2 (Caffe ceil mode): x ->
 * buffer `to` at offset 0, the convolution's output after it in `to` where the engine
 * needs it (fm_nn_conv2d_prelu_maxpool: R-Net's and O-Net's first convolutions skip
 * it, the pool reading their rows where they lie). */
static fm_status conv_prelu_pool(fm_arena *a, act_bufs *b, const fm_tensor *x, int to,
                                 const fm_tensor *w, const fm_tensor *bias,
                                 const fm_tensor *alpha, int k, fm_tensor *y, fm_error *err)
{
    const fm_conv2d_params p = fm_conv2d_sym(1, 0);
    const fm_pool2d_params pp = fm_pool2d_sym(k, 2, 0, 1, 0);
    fm_tensor cs, ps, work;
    fm_status st = fm_nn_conv2d_shape(x, w, &p, &cs, err);
    if (!st)
        st = fm_nn_pool2d_shape(&cs, &pp, &ps, err);
    if (!st)
        st = act_view(b, to, 0, ps.n, ps.c, ps.h, ps.w, y, err);
    if (!st)
        st = act_view(b, to, fm_tensor_count(y), cs.n, cs.c, cs.h, cs.w, &work, err);
    if (!st)
        st = fm_nn_conv2d_prelu_maxpool(a, x, w, bias, alpha, &p, &pp, &work, y, err);
    return st;
}

/* Max pooling k/s, Caffe ceil mode, no padding: x -> buffer `to`. */
static fm_status maxpool(fm_arena *a, act_bufs *b, const fm_tensor *x, int to, int k, int s,
                         fm_tensor *y, fm_error *err)
{
    fm_pool2d_params p = fm_pool2d_sym(k, s, 0, 1, 0);
    fm_tensor sh;
    fm_status st = fm_nn_pool2d_shape(x, &p, &sh, err);
    if (!st)
        st = act_view(b, to, 0, sh.n, sh.c, sh.h, sh.w, y, err);
    if (!st)
        st = fm_nn_maxpool2d(a, x, &p, y, err);
    return st;
}

/* Dense + bias (+ PReLU when alpha): x -> buffer `to` at offset. */
static fm_status dense(fm_arena *a, act_bufs *b, const fm_tensor *x, int to, size_t offset,
                       const fm_tensor *w, const fm_tensor *bias, const fm_tensor *alpha,
                       fm_tensor *y, fm_error *err)
{
    fm_status st = act_view(b, to, offset, x->n, w->n, 1, 1, y, err);
    if (!st)
        st = fm_nn_dense(a, x, w, bias, y, err);
    if (!st && alpha)
        st = fm_nn_prelu(a, y, alpha, y, err);
    return st;
}

/* P-Net on x [1, 3, H, W] (in buffer X): logits [1, 2, h, w] and regression
 * [1, 4, h, w] in buffer X. */
static fm_status pnet_forward(const mtcnn_net *net, fm_arena *a, act_bufs *b,
                              const fm_tensor *x, fm_tensor *logits, fm_tensor *reg,
                              fm_error *err)
{
    const fm_tensor *t = net->t;
    fm_tensor y1, p1, y2, y3, sh;
    fm_conv2d_params p = fm_conv2d_sym(1, 0);
    /* conv1, PReLU and the pool into buffer Y: in one pass where the engine can
     * (AVX-512), else in two with conv1's output after the pool's in buffer Y */
    const fm_pool2d_params pp = fm_pool2d_sym(2, 2, 0, 1, 0);
    fm_status st = fm_nn_conv2d_shape(x, &t[P_C1W], &p, &y1, err);
    if (!st)
        st = fm_nn_pool2d_shape(&y1, &pp, &sh, err);
    if (!st)
        st = act_view(b, BUF_Y, 0, sh.n, sh.c, sh.h, sh.w, &p1, err);
    if (!st)
        st = act_view(b, BUF_Y, fm_tensor_count(&p1), y1.n, y1.c, y1.h, y1.w, &y1, err);
    if (!st)
        st = fm_nn_conv2d_prelu_maxpool(a, x, &t[P_C1W], &t[P_C1B], &t[P_A1], &p, &pp, &y1,
                                        &p1, err);
    if (!st)
        st = conv_prelu(a, b, &p1, BUF_X, &t[P_C2W], &t[P_C2B], &t[P_A2], &y2, err);
    if (!st)
        st = conv_prelu(a, b, &y2, BUF_Y, &t[P_C3W], &t[P_C3B], &t[P_A3], &y3, err);
    if (st)
        return st;
    /* logits then regression, one after the other in buffer X: the 6 planes of the
     * stacked head */
    size_t plane = (size_t)y3.h * (size_t)y3.w;
    fm_tensor both;
    st = act_view(b, BUF_X, 0, 1, 6, y3.h, y3.w, &both, err);
    if (!st)
        st = act_view(b, BUF_X, 0, 1, 2, y3.h, y3.w, logits, err);
    if (!st)
        st = act_view(b, BUF_X, 2 * plane, 1, 4, y3.h, y3.w, reg, err);
    if (!st)
        st = fm_nn_conv2d(a, &y3, &net->head_wt, &net->head_bt, &p, &both, err);
    return st;
}

/* R-Net on x [n, 3, 24, 24] (in X): logits [n, 2], regression [n, 4] (in X). */
static fm_status rnet_forward(const mtcnn_net *net, fm_arena *a, act_bufs *b,
                              const fm_tensor *x, fm_tensor *logits, fm_tensor *reg,
                              fm_error *err)
{
    const fm_tensor *t = net->t;
    fm_tensor p1, y2, p2, y3, d4;
    size_t n = (size_t)x->n;
    fm_status st =
        conv_prelu_pool(a, b, x, BUF_Y, &t[R_C1W], &t[R_C1B], &t[R_A1], 3, &p1, err);
    if (!st)
        st = conv_prelu(a, b, &p1, BUF_X, &t[R_C2W], &t[R_C2B], &t[R_A2], &y2, err);
    if (!st)
        st = maxpool(a, b, &y2, BUF_Y, 3, 2, &p2, err);
    if (!st)
        st = conv_prelu(a, b, &p2, BUF_X, &t[R_C3W], &t[R_C3B], &t[R_A3], &y3, err);
    if (!st)
        st = dense(a, b, &y3, BUF_Y, 0, &t[R_D4W], &t[R_D4B], &t[R_A4], &d4, err);
    if (!st)
        st = dense(a, b, &d4, BUF_X, 0, &t[R_D51W], &t[R_D51B], NULL, logits, err);
    if (!st)
        st = dense(a, b, &d4, BUF_X, 2 * n, &t[R_D52W], &t[R_D52B], NULL, reg, err);
    return st;
}

/* O-Net on x [n, 3, 48, 48] (in X): logits [n, 2], regression [n, 4], landmarks
 * [n, 10] (in X). */
static fm_status onet_forward(const mtcnn_net *net, fm_arena *a, act_bufs *b,
                              const fm_tensor *x, fm_tensor *logits, fm_tensor *reg,
                              fm_tensor *pts, fm_error *err)
{
    const fm_tensor *t = net->t;
    fm_tensor p1, y2, p2, y3, p3, y4, d5;
    size_t n = (size_t)x->n;
    fm_status st =
        conv_prelu_pool(a, b, x, BUF_Y, &t[O_C1W], &t[O_C1B], &t[O_A1], 3, &p1, err);
    if (!st)
        st = conv_prelu(a, b, &p1, BUF_X, &t[O_C2W], &t[O_C2B], &t[O_A2], &y2, err);
    if (!st)
        st = maxpool(a, b, &y2, BUF_Y, 3, 2, &p2, err);
    if (!st)
        st = conv_prelu(a, b, &p2, BUF_X, &t[O_C3W], &t[O_C3B], &t[O_A3], &y3, err);
    if (!st)
        st = maxpool(a, b, &y3, BUF_Y, 2, 2, &p3, err);
    if (!st)
        st = conv_prelu(a, b, &p3, BUF_X, &t[O_C4W], &t[O_C4B], &t[O_A4], &y4, err);
    if (!st)
        st = dense(a, b, &y4, BUF_Y, 0, &t[O_D5W], &t[O_D5B], &t[O_A5], &d5, err);
    if (!st)
        st = dense(a, b, &d5, BUF_X, 0, &t[O_D61W], &t[O_D61B], NULL, logits, err);
    if (!st)
        st = dense(a, b, &d5, BUF_X, 2 * n, &t[O_D62W], &t[O_D62B], NULL, reg, err);
    if (!st)
        st = dense(a, b, &d5, BUF_X, 6 * n, &t[O_D63W], &t[O_D63B], NULL, pts, err);
    return st;
}

/* ================================================================================
 * The detector
 * ============================================================================== */

struct fm_detector {
    fm_detect_opts opts;
    mtcnn_net pnet, rnet, onet;
    fm_arena *arena;
    size_t mark;       /* fill level after the persistent buffers */
    act_bufs bufs;
    int level_cap;     /* max_level_candidates */
    int cand_cap;      /* max_candidates */
    int max_level_w;   /* widest pyramid level: max_side + 1 */
    /* Persistent buffers in the arena. */
    int *col_x0, *col_x1;   /* max_level_w: pyramid column sources */
    float *col_fx;
    int *col_masks;         /* 9 x max_level_w: their sample_masks, for rows with border */
    fm_mtcnn_cand *level;   /* level_cap: one level's P-Net candidates */
    fm_mtcnn_cand *cand_a;  /* cand_cap: ping-pong candidate lists */
    fm_mtcnn_cand *cand_b;
    float *pts;             /* cand_cap x 10: O-Net landmark outputs */
    int *order, *tmp, *keep; /* max(level_cap, cand_cap) */
    unsigned char *flag;
    double scales[FM_DETECT_MAX_LEVELS];
    double rnet_th, onet_th; /* the look's R-Net and O-Net thresholds ("Second look") */
    fm_mtcnn_cand *cand_r; /* cand_cap, with opts.retry: the second look's candidates
                              for R-Net, from the same P-Net maps */
};

void fm_detect_opts_defaults(fm_detect_opts *o)
{
    memset(o, 0, sizeof *o);
    o->min_face = 20;
    o->min_face_frac = 0.025;
    o->max_side = 1600;
    o->scale_factor = 0.709;
    o->pnet_threshold = 0.6;
    o->rnet_threshold = 0.7;
    o->onet_threshold = 0.7;
    o->max_faces = 64;
    o->retry = 1;
    o->retry_pnet_threshold = 0.5;
    o->retry_rnet_threshold = 0.6;
    o->retry_onet_threshold = 0.6;
}

void fm_detect_opts_from_config(fm_detect_opts *o, const fm_config *c)
{
    fm_detect_opts_defaults(o);
    o->min_face = (double)c->detect.min_face;
    o->min_face_frac = c->detect.min_face_frac;
    o->max_side = c->detect.max_side > INT_MAX ? INT_MAX : (int)c->detect.max_side;
    o->scale_factor = c->detect.scale_factor;
    o->pnet_threshold = c->detect.pnet_threshold;
    o->rnet_threshold = c->detect.rnet_threshold;
    o->onet_threshold = c->detect.onet_threshold;
    o->max_faces = c->detect.max_faces > INT_MAX ? INT_MAX : (int)c->detect.max_faces;
    o->pad = c->detect.pad;
    o->retry = c->detect.retry ? 1 : 0;
    o->retry_pnet_threshold = c->detect.retry_pnet_threshold;
    o->retry_rnet_threshold = c->detect.retry_rnet_threshold;
    o->retry_onet_threshold = c->detect.retry_onet_threshold;
}

static fm_status check_opts(const fm_detect_opts *o, fm_error *err)
{
    if (!(o->min_face > 0) || !isfinite(o->min_face))
        return fm_error_set(err, FM_ERR_INVALID, "detector: min_face %g must be > 0",
                            o->min_face);
    if (!(o->min_face_frac >= 0 && o->min_face_frac <= 0.5))
        return fm_error_set(err, FM_ERR_INVALID, "detector: min_face_frac %g is outside 0..0.5",
                            o->min_face_frac);
    if (o->max_side < 12 || o->max_side > 16384)
        return fm_error_set(err, FM_ERR_INVALID, "detector: max_side %d is outside 12..16384",
                            o->max_side);
    if (!(o->scale_factor > 0 && o->scale_factor <= 0.99))
        return fm_error_set(err, FM_ERR_INVALID,
                            "detector: scale_factor %g is outside (0, 0.99]", o->scale_factor);
    const double th[6] = {o->pnet_threshold,       o->rnet_threshold,
                          o->onet_threshold,       o->retry_pnet_threshold,
                          o->retry_rnet_threshold, o->retry_onet_threshold};
    const char *names[6] = {"pnet", "rnet", "onet", "retry_pnet", "retry_rnet", "retry_onet"};
    for (int i = 0; i < 6; i++)
        if (!(th[i] >= 0 && th[i] <= 1))
            return fm_error_set(err, FM_ERR_INVALID,
                                "detector: %s_threshold %g is outside 0..1", names[i], th[i]);
    if (o->retry != 0 && o->retry != 1)
        return fm_error_set(err, FM_ERR_INVALID, "detector: retry %d is not 0 or 1", o->retry);
    if (!(o->pad >= 0 && o->pad <= 1))
        return fm_error_set(err, FM_ERR_INVALID, "detector: pad %g is outside 0..1", o->pad);
    if (o->max_faces < 1)
        return fm_error_set(err, FM_ERR_INVALID, "detector: max_faces %d must be >= 1",
                            o->max_faces);
    if (o->max_level_candidates < 0 || o->max_level_candidates > FM_DETECT_MAX_CAP ||
        o->max_candidates < 0 || o->max_candidates > FM_DETECT_MAX_CAP)
        return fm_error_set(err, FM_ERR_INVALID,
                            "detector: candidate caps %d, %d are outside 0..%d",
                            o->max_level_candidates, o->max_candidates, FM_DETECT_MAX_CAP);
    return FM_OK;
}

/* Takes count elements of size bytes from the arena into *p. */
static fm_status take(fm_arena *a, size_t count, size_t size, void *p, fm_error *err)
{
    void *q = NULL;
    fm_status st = fm_arena_alloc(a, count * size, &q, err);
    if (!st)
        memcpy(p, &q, sizeof q);
    return st;
}

/* Carves the persistent buffers out of a (measuring or real), in a fixed order. */
static fm_status alloc_persistent(fm_detector *d, fm_arena *a, fm_error *err)
{
    size_t big = (size_t)(d->level_cap > d->cand_cap ? d->level_cap : d->cand_cap);
    size_t w = (size_t)d->max_level_w;
    fm_status st = FM_OK;
    if (!st) st = take(a, d->bufs.cap[BUF_X], sizeof(float), &d->bufs.buf[BUF_X], err);
    if (!st) st = take(a, d->bufs.cap[BUF_Y], sizeof(float), &d->bufs.buf[BUF_Y], err);
    if (!st) st = take(a, w, sizeof(int), &d->col_x0, err);
    if (!st) st = take(a, w, sizeof(int), &d->col_x1, err);
    if (!st) st = take(a, w, sizeof(float), &d->col_fx, err);
    if (!st) st = take(a, 9 * w, sizeof(int), &d->col_masks, err);
    if (!st) st = take(a, (size_t)d->level_cap, sizeof(fm_mtcnn_cand), &d->level, err);
    if (!st) st = take(a, (size_t)d->cand_cap, sizeof(fm_mtcnn_cand), &d->cand_a, err);
    if (!st) st = take(a, (size_t)d->cand_cap, sizeof(fm_mtcnn_cand), &d->cand_b, err);
    if (!st) st = take(a, (size_t)d->cand_cap * 10, sizeof(float), &d->pts, err);
    if (!st && d->opts.retry)
        st = take(a, (size_t)d->cand_cap, sizeof(fm_mtcnn_cand), &d->cand_r, err);
    if (!st) st = take(a, big, sizeof(int), &d->order, err);
    if (!st) st = take(a, big, sizeof(int), &d->tmp, err);
    if (!st) st = take(a, big, sizeof(int), &d->keep, err);
    if (!st) st = take(a, big, 1, &d->flag, err);
    return st;
}

/* Runs each network once on its worst-case input shape (data untouched on a measuring
 * arena), resetting the arena after each. */
static fm_status run_worst_case(fm_detector *d, fm_arena *a, fm_error *err)
{
    size_t mark = fm_arena_mark(a);
    fm_tensor x, o1, o2, o3;
    int rows = 2 * FM_DETECT_PNET_STRIP_ROWS + 10;
    fm_status st = act_view(&d->bufs, BUF_X, 0, 1, 3, rows, d->max_level_w, &x, err);
    if (!st)
        st = pnet_forward(&d->pnet, a, &d->bufs, &x, &o1, &o2, err);
    fm_arena_reset(a, mark);
    if (!st)
        st = act_view(&d->bufs, BUF_X, 0, FM_DETECT_RNET_BATCH, 3, 24, 24, &x, err);
    if (!st)
        st = rnet_forward(&d->rnet, a, &d->bufs, &x, &o1, &o2, err);
    fm_arena_reset(a, mark);
    if (!st)
        st = act_view(&d->bufs, BUF_X, 0, FM_DETECT_ONET_BATCH, 3, 48, 48, &x, err);
    if (!st)
        st = onet_forward(&d->onet, a, &d->bufs, &x, &o1, &o2, &o3, err);
    fm_arena_reset(a, mark);
    return st;
}

fm_status fm_detector_open(fm_detector **out, const char *models_dir,
                           const fm_detect_opts *opts, fm_error *err)
{
    if (!out)
        return fm_error_set(err, FM_ERR_INVALID, "detector: out is NULL");
    *out = NULL;
    if (!models_dir)
        return fm_error_set(err, FM_ERR_INVALID, "detector: models directory is NULL");
    fm_detect_opts o;
    if (opts)
        o = *opts;
    else
        fm_detect_opts_defaults(&o);
    fm_status st = check_opts(&o, err);
    if (st)
        return st;
    if (o.max_level_candidates == 0)
        o.max_level_candidates = FM_DETECT_DEFAULT_LEVEL_CANDIDATES;
    if (o.max_candidates == 0)
        o.max_candidates = FM_DETECT_DEFAULT_CANDIDATES;

    fm_arena *meas = NULL;
    fm_detector *d = calloc(1, sizeof *d);
    if (!d)
        return fm_error_set(err, FM_ERR_NOMEM, "detector: out of memory");
    d->opts = o;
    d->level_cap = o.max_level_candidates;
    d->cand_cap = o.max_candidates;
    d->max_level_w = o.max_side + 1;

    st = net_open(&d->pnet, models_dir, FM_DETECT_PNET_FILE, "mtcnn.pnet", 0, pnet_spec,
                  P_COUNT, err);
    if (!st) {
        mtcnn_net *pn = &d->pnet;
        memcpy(pn->head_w, pn->t[P_C41W].data, 2 * 32 * sizeof *pn->head_w);
        memcpy(pn->head_w + 2 * 32, pn->t[P_C42W].data, 4 * 32 * sizeof *pn->head_w);
        memcpy(pn->head_b, pn->t[P_C41B].data, 2 * sizeof *pn->head_b);
        memcpy(pn->head_b + 2, pn->t[P_C42B].data, 4 * sizeof *pn->head_b);
        pn->head_wt = fm_tensor_make(6, 32, 1, 1, pn->head_w);
        pn->head_bt = fm_tensor_make(1, 6, 1, 1, pn->head_b);
    }
    if (!st)
        st = net_open(&d->rnet, models_dir, FM_DETECT_RNET_FILE, "mtcnn.rnet", 24, rnet_spec,
                      R_COUNT, err);
    if (!st)
        st = net_open(&d->onet, models_dir, FM_DETECT_ONET_FILE, "mtcnn.onet", 48, onet_spec,
                      O_COUNT, err);
    if (st)
        goto fail;

    /* 1: the activation buffers' sizes. */
    d->bufs.sizing = 1;
    st = fm_arena_new_measuring(&meas, err);
    if (!st)
        st = run_worst_case(d, meas, err);
    fm_arena_destroy(&meas);
    if (st)
        goto fail;
    d->bufs.sizing = 0;
    /* 2: the whole arena: persistent buffers, then the worst scratch of each net. */
    st = fm_arena_new_measuring(&meas, err);
    if (!st)
        st = alloc_persistent(d, meas, err);
    if (!st)
        st = run_worst_case(d, meas, err);
    size_t size = fm_arena_high_water(meas);
    fm_arena_destroy(&meas);
    if (st)
        goto fail;
    /* 3: the arena itself. */
    st = fm_arena_new(size, &d->arena, err);
    if (!st)
        st = alloc_persistent(d, d->arena, err);
    if (st)
        goto fail;
    d->mark = fm_arena_mark(d->arena);
    *out = d;
    return FM_OK;
fail:
    fm_arena_destroy(&meas);
    fm_detector_close(&d);
    return st;
}

void fm_detector_close(fm_detector **pd)
{
    if (!pd || !*pd)
        return;
    fm_detector *d = *pd;
    fm_arena_destroy(&d->arena);
    fm_model_close(&d->pnet.model);
    fm_model_close(&d->rnet.model);
    fm_model_close(&d->onet.model);
    free(d);
    *pd = NULL;
}

const fm_detect_opts *fm_detector_opts(const fm_detector *d)
{
    return d ? &d->opts : NULL;
}

size_t fm_detector_arena_bytes(const fm_detector *d)
{
    return d ? fm_arena_size(d->arena) : 0;
}

/* ---- sampling ------------------------------------------------------------------ */

/* The picture the detector works on: img inside a border of pad pixels of
 * FM_DETECT_PAD_VALUE on every side (opts.pad; 0 = none). w x h include the border.
 * Axis indices below are into img; two negative values stand for the border and for
 * "outside everything" (crops read zeros there). */
typedef struct src_view {
    const fm_image *img;
    int pad;
    int w, h;
} src_view;

enum { IDX_ZERO = -1, IDX_BORDER = -2 };

/* Index into img of padded index k on an axis of n image pixels. */
static int axis_index(int k, int pad, int n)
{
    int i = k - pad;
    return i >= 0 && i < n ? i : IDX_BORDER;
}

/* One channel of a pixel given its row (pointer and index) and column index. */
static inline float fetch(const uint8_t *row, int yi, int xi, int c)
{
    if (yi == IDX_ZERO || xi == IDX_ZERO)
        return 0.0f;
    if (yi == IDX_BORDER || xi == IDX_BORDER)
        return (float)FM_DETECT_PAD_VALUE;
    return (float)row[3 * (size_t)xi + c];
}

static const uint8_t *row_ptr(const fm_image *img, int yi)
{
    return yi >= 0 ? img->data + (size_t)yi * img->stride : NULL;
}

/* Source positions of output sample o of a pyramid level at scale s over an axis of
 * n_in (padded) pixels, edge clamp: padded indices i0, i1 mapped into the image (pad,
 * n_img), and the float32 fraction. */
static void level_axis(int o, double s, int n_in, int pad, int n_img, int *i0, int *i1,
                       float *f)
{
    double p = ((double)o + 0.5) / s - 0.5;
    if (p < 0.0)
        p = 0.0;
    if (p > (double)(n_in - 1))
        p = (double)(n_in - 1);
    double fl = floor(p);
    int k = (int)fl;
    *i0 = axis_index(k, pad, n_img);
    *i1 = axis_index(k + 1 < n_in ? k + 1 : n_in - 1, pad, n_img);
    *f = (float)(p - fl);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define LEVEL_AVX2 1
/* Columns [0, 8k) of one pyramid or crop row, 8 at a time: the operations of the
 * scalar loops in sample_level_rows and sample_crop, in float32 and in the same order
 * (no FMA), so the results are the same bits. Pixels are gathered as 32-bit words: the
 * byte after each pixel is read and dropped, so neither row may be the image's last
 * unless its stride leaves a byte after the pixels. With msk and pat (rows that reach
 * into the border or past the picture) each gathered word is and-ed with msk[r][t]
 * and or-ed with pat[r][t] (r: source row 0 or 1, t: column x0 or x1), which keep an
 * image pixel and turn the others into what fetch() reads there (the border value or
 * zero). Returns the columns done. */
static inline __attribute__((always_inline, target("avx2"))) int
row_avx2(const uint8_t *row0, const uint8_t *row1, const int *col_x0, const int *col_x1,
         const int *const msk[2][2], const int *const pat[2][2], const float *col_fx,
         float fy, const float *mean, const float *scale, float *out, size_t plane, int ws)
{
    const __m256 one = _mm256_set1_ps(1.0f), vfy = _mm256_set1_ps(fy);
    const __m256 vfy1 = _mm256_sub_ps(one, vfy);
    const __m256i three = _mm256_set1_epi32(3), low = _mm256_set1_epi32(0xff);
    /* unmasked rows: scalar loads through a buffer, as in row_avx512 */
    int32_t words[4][8] __attribute__((aligned(32))) = {{0}};
    const uint8_t *const rows[2] = {row0, row1};
#define PIXELS(row, idx, r, t)                                                            \
    (msk ? _mm256_or_si256(                                                               \
               _mm256_and_si256(_mm256_i32gather_epi32((const int *)(row), idx, 1),      \
                                _mm256_loadu_si256((const __m256i *)(msk[r][t] + ox))),   \
               _mm256_loadu_si256((const __m256i *)(pat[r][t] + ox)))                     \
         : _mm256_i32gather_epi32((const int *)(row), idx, 1))
    int ox = 0;
    for (; ox + 8 <= ws; ox += 8) {
        __m256i i0 = _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(col_x0 + ox)),
                                        three);
        __m256i i1 = _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(col_x1 + ox)),
                                        three);
        __m256 fx = _mm256_loadu_ps(col_fx + ox), fx1 = _mm256_sub_ps(one, fx);
        __m256i a0, a1, b0, b1;
        if (!msk) {
            for (int r = 0; r < 2; r++)
                for (int i = 0; i < 8; i++) {
                    memcpy(&words[2 * r][i], rows[r] + 3 * (size_t)col_x0[ox + i], 4);
                    memcpy(&words[2 * r + 1][i], rows[r] + 3 * (size_t)col_x1[ox + i], 4);
                }
            a0 = _mm256_load_si256((const __m256i *)words[0]);
            a1 = _mm256_load_si256((const __m256i *)words[1]);
            b0 = _mm256_load_si256((const __m256i *)words[2]);
            b1 = _mm256_load_si256((const __m256i *)words[3]);
        } else {
            a0 = PIXELS(row0, i0, 0, 0), a1 = PIXELS(row0, i1, 0, 1);
            b0 = PIXELS(row1, i0, 1, 0), b1 = PIXELS(row1, i1, 1, 1);
        }
        for (int c = 0; c < 3; c++) {
            __m256 pa0 = _mm256_cvtepi32_ps(_mm256_and_si256(a0, low));
            __m256 pa1 = _mm256_cvtepi32_ps(_mm256_and_si256(a1, low));
            __m256 pb0 = _mm256_cvtepi32_ps(_mm256_and_si256(b0, low));
            __m256 pb1 = _mm256_cvtepi32_ps(_mm256_and_si256(b1, low));
            __m256 top = _mm256_add_ps(_mm256_mul_ps(fx1, pa0), _mm256_mul_ps(fx, pa1));
            __m256 bot = _mm256_add_ps(_mm256_mul_ps(fx1, pb0), _mm256_mul_ps(fx, pb1));
            __m256 val = _mm256_add_ps(_mm256_mul_ps(vfy1, top), _mm256_mul_ps(vfy, bot));
            val = _mm256_mul_ps(_mm256_sub_ps(val, _mm256_set1_ps(mean[c])),
                                _mm256_set1_ps(scale[c]));
            _mm256_storeu_ps(out + (size_t)c * plane + ox, val);
            a0 = _mm256_srli_epi32(a0, 8);
            a1 = _mm256_srli_epi32(a1, 8);
            b0 = _mm256_srli_epi32(b0, 8);
            b1 = _mm256_srli_epi32(b1, 8);
        }
    }
#undef PIXELS
    return ox;
}

/* row_avx2 with 16 columns at a time and the last ones under a mask: the same
 * operations lane by lane, so the same bits. A lane past ws gathers nothing (its
 * mask bit is clear) and stores nothing. Returns ws. */
static inline __attribute__((always_inline, target("avx512f"))) int
row_avx512(const uint8_t *row0, const uint8_t *row1, const int *col_x0, const int *col_x1,
           const int *const msk[2][2], const int *const pat[2][2], const float *col_fx,
           float fy, const float *mean, const float *scale, float *out, size_t plane, int ws)
{
    const __m512 one = _mm512_set1_ps(1.0f), vfy = _mm512_set1_ps(fy);
    const __m512 vfy1 = _mm512_sub_ps(one, vfy);
    const __m512i three = _mm512_set1_epi32(3), low = _mm512_set1_epi32(0xff);
    const __m512i zero = _mm512_setzero_si512();
    /* Unmasked rows (every pyramid row and crop row inside the picture) read their
     * words with scalar loads through a small buffer: the same words, so the same
     * bits. The gathers took 84% of this kernel's time on photos (a Zen 5 core); with
     * the loads and sample_level_rows' prefetch its share of a photo went from 8.4%
     * to 5.3%. */
    int32_t words[4][16] __attribute__((aligned(64))) = {{0}};
    const uint8_t *const rows[2] = {row0, row1};
#define STAGED(w) _mm512_load_si512((const void *)words[w])
#define PIXELS(row, idx, r, t)                                                            \
    (msk ? _mm512_or_si512(                                                               \
               _mm512_and_si512(_mm512_mask_i32gather_epi32(zero, m, idx, row, 1),        \
                                _mm512_maskz_loadu_epi32(m, msk[r][t] + ox)),             \
               _mm512_maskz_loadu_epi32(m, pat[r][t] + ox))                               \
         : _mm512_mask_i32gather_epi32(zero, m, idx, row, 1))
    for (int ox = 0; ox < ws; ox += 16) {
        const __mmask16 m = ws - ox >= 16 ? (__mmask16)0xffff
                                          : (__mmask16)((1u << (ws - ox)) - 1u);
        __m512i i0 = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(m, col_x0 + ox), three);
        __m512i i1 = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(m, col_x1 + ox), three);
        __m512 fx = _mm512_maskz_loadu_ps(m, col_fx + ox), fx1 = _mm512_sub_ps(one, fx);
        __m512i a0, a1, b0, b1;
        if (!msk) {
            const int n = ws - ox < 16 ? ws - ox : 16;
            for (int r = 0; r < 2; r++)
                for (int i = 0; i < n; i++) {
                    memcpy(&words[2 * r][i], rows[r] + 3 * (size_t)col_x0[ox + i], 4);
                    memcpy(&words[2 * r + 1][i], rows[r] + 3 * (size_t)col_x1[ox + i], 4);
                }
            a0 = STAGED(0), a1 = STAGED(1), b0 = STAGED(2), b1 = STAGED(3);
        } else {
            a0 = PIXELS(row0, i0, 0, 0), a1 = PIXELS(row0, i1, 0, 1);
            b0 = PIXELS(row1, i0, 1, 0), b1 = PIXELS(row1, i1, 1, 1);
        }
        for (int c = 0; c < 3; c++) {
            __m512 pa0 = _mm512_cvtepi32_ps(_mm512_and_si512(a0, low));
            __m512 pa1 = _mm512_cvtepi32_ps(_mm512_and_si512(a1, low));
            __m512 pb0 = _mm512_cvtepi32_ps(_mm512_and_si512(b0, low));
            __m512 pb1 = _mm512_cvtepi32_ps(_mm512_and_si512(b1, low));
            __m512 top = _mm512_add_ps(_mm512_mul_ps(fx1, pa0), _mm512_mul_ps(fx, pa1));
            __m512 bot = _mm512_add_ps(_mm512_mul_ps(fx1, pb0), _mm512_mul_ps(fx, pb1));
            __m512 val = _mm512_add_ps(_mm512_mul_ps(vfy1, top), _mm512_mul_ps(vfy, bot));
            val = _mm512_mul_ps(_mm512_sub_ps(val, _mm512_set1_ps(mean[c])),
                                _mm512_set1_ps(scale[c]));
            _mm512_mask_storeu_ps(out + (size_t)c * plane + ox, m, val);
            a0 = _mm512_srli_epi32(a0, 8);
            a1 = _mm512_srli_epi32(a1, 8);
            b0 = _mm512_srli_epi32(b0, 8);
            b1 = _mm512_srli_epi32(b1, 8);
        }
    }
#undef PIXELS
#undef STAGED
    return ws;
}

/* row_avx2 for rows inside the image (level_row_avx2), and for masked rows; AVX-512's
 * row_avx512 where the engine's kernels run it. */
__attribute__((target("avx512f"))) static int level_row_avx512(
    const uint8_t *row0, const uint8_t *row1, const int *col_x0, const int *col_x1,
    const float *col_fx, float fy, const float *mean, const float *scale, float *out,
    size_t plane, int ws)
{
    return row_avx512(row0, row1, col_x0, col_x1, NULL, NULL, col_fx, fy, mean, scale, out,
                      plane, ws);
}
__attribute__((target("avx512f"))) static int crop_row_masked_avx512(
    const uint8_t *row0, const uint8_t *row1, const int *col_x0, const int *col_x1,
    const int *const msk[2][2], const int *const pat[2][2], const float *col_fx, float fy,
    const float *mean, const float *scale, float *out, size_t plane, int ws)
{
    return row_avx512(row0, row1, col_x0, col_x1, msk, pat, col_fx, fy, mean, scale, out,
                      plane, ws);
}
__attribute__((target("avx2"))) static int level_row_avx2(
    const uint8_t *row0, const uint8_t *row1, const int *col_x0, const int *col_x1,
    const float *col_fx, float fy, const float *mean, const float *scale, float *out,
    size_t plane, int ws)
{
    return row_avx2(row0, row1, col_x0, col_x1, NULL, NULL, col_fx, fy, mean, scale, out,
                    plane, ws);
}
__attribute__((target("avx2"))) static int crop_row_masked_avx2(
    const uint8_t *row0, const uint8_t *row1, const int *col_x0, const int *col_x1,
    const int *const msk[2][2], const int *const pat[2][2], const float *col_fx, float fy,
    const float *mean, const float *scale, float *out, size_t plane, int ws)
{
    return row_avx2(row0, row1, col_x0, col_x1, msk, pat, col_fx, fy, mean, scale, out,
                    plane, ws);
}
#else
#define LEVEL_AVX2 0
#endif

#if LEVEL_AVX2
/* 1 when row_avx2 may gather from image rows y0 and y1: its 32-bit reads take the
 * byte after each pixel, which the last row has only when the stride leaves one. */
static int gather_rows_ok(const fm_image *img, int y0, int y1)
{
    const int last = img->h - 1;
    return (y0 < last && y1 < last) || img->stride > 3 * (size_t)img->w;
}
#endif

/* 1 when every one of the n column sources is an image pixel (no border, no zero). */
static int all_inside(const int *x0, const int *x1, int n)
{
    for (int i = 0; i < n; i++)
        if (x0[i] < 0 || x1[i] < 0)
            return 0;
    return 1;
}

/* One row of n samples whose source rows y0, y1 and columns x0s, x1s all lie inside
 * img: the arithmetic of the general loops below without the border tests of fetch(),
 * 8 (AVX2) or 16 (AVX-512) samples at a time when vector (the same bits), into out
 * (3 planes plane apart), normalised with mean and scale. */
static void sample_row_inside(const fm_image *img, int y0, int y1, const int *x0s,
                              const int *x1s, const float *fxs, float fy, const float *mean,
                              const float *scale, float *out, size_t plane, int n, int vector)
{
    const uint8_t *row0 = row_ptr(img, y0), *row1 = row_ptr(img, y1);
    const float one = 1.0f;
    int ox = 0;
#if LEVEL_AVX2
    if (vector && gather_rows_ok(img, y0, y1))
        ox = vector > 1 ? level_row_avx512(row0, row1, x0s, x1s, fxs, fy, mean, scale, out,
                                           plane, n)
                        : level_row_avx2(row0, row1, x0s, x1s, fxs, fy, mean, scale, out,
                                         plane, n);
#else
    (void)vector;
#endif
    for (; ox < n; ox++) {
        const uint8_t *a0 = row0 + 3 * (size_t)x0s[ox], *a1 = row0 + 3 * (size_t)x1s[ox];
        const uint8_t *b0 = row1 + 3 * (size_t)x0s[ox], *b1 = row1 + 3 * (size_t)x1s[ox];
        float fx = fxs[ox];
        for (int c = 0; c < 3; c++) {
            float top = (one - fx) * (float)a0[c] + fx * (float)a1[c];
            float bot = (one - fx) * (float)b0[c] + fx * (float)b1[c];
            float val = (one - fy) * top + fy * bot;
            out[(size_t)c * plane + ox] = (val - mean[c]) * scale[c];
        }
    }
}

/* The columns and masks with which crop_row_masked_avx2 samples rows that reach into
 * the border or past the picture, for n columns whose sources are xi0 and xi1: idx[t]
 * the column (0 where it is no image pixel), and per kind of source row: an image row
 * keeps image pixels (in_and -1) and reads the border value or zero elsewhere (in_or);
 * a border row reads the border value except past the picture (border_or); a row past
 * the picture reads zero (zero, for both). Arrays of n ints each, the caller's. */
typedef struct sample_masks {
    int *idx[2], *in_and[2], *in_or[2], *border_or[2], *zero;
} sample_masks;

static void fill_masks(const int *xi0, const int *xi1, int n, const sample_masks *m)
{
    const int border = FM_DETECT_PAD_VALUE * 0x010101; /* three channels */
    for (int t = 0; t < 2; t++)
        for (int o = 0; o < n; o++) {
            const int xi = t ? xi1[o] : xi0[o];
            m->idx[t][o] = xi >= 0 ? xi : 0;
            m->in_and[t][o] = xi >= 0 ? -1 : 0;
            m->in_or[t][o] = xi == IDX_BORDER ? border : 0;
            m->border_or[t][o] = xi == IDX_ZERO ? 0 : border;
        }
    for (int o = 0; o < n; o++)
        m->zero[o] = 0;
}

/* One row of n samples from source rows y0, y1 (image rows, IDX_BORDER or IDX_ZERO)
 * with the vector kernel where it may read the rows (see level_row_avx2), masked by m
 * (filled for these columns); returns the columns done, the caller does the rest. */
static int sample_row_masked(const fm_image *img, int y0, int y1, const sample_masks *m,
                             const float *fxs, float fy, const float *mean,
                             const float *scale, float *out, size_t plane, int n)
{
#if LEVEL_AVX2
    /* rows past the picture gather from row 0 and keep none of it */
    const int u0 = y0 >= 0 ? y0 : 0, u1 = y1 >= 0 ? y1 : 0;
    if (!gather_rows_ok(img, u0, u1))
        return 0;
    const int *msk[2][2], *pat[2][2];
    const int ys[2] = {y0, y1};
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 2; t++) {
            const int k = ys[r] >= 0 ? 0 : ys[r] == IDX_BORDER ? 1 : 2;
            msk[r][t] = k ? m->zero : m->in_and[t];
            pat[r][t] = k == 0 ? m->in_or[t] : k == 1 ? m->border_or[t] : m->zero;
        }
    if (fm_nn_isa_now() >= FM_NN_ISA_AVX512)
        return crop_row_masked_avx512(row_ptr(img, u0), row_ptr(img, u1), m->idx[0],
                                      m->idx[1], msk, pat, fxs, fy, mean, scale, out, plane,
                                      n);
    return crop_row_masked_avx2(row_ptr(img, u0), row_ptr(img, u1), m->idx[0], m->idx[1],
                                msk, pat, fxs, fy, mean, scale, out, plane, n);
#else
    (void)img, (void)y0, (void)y1, (void)m, (void)fxs, (void)fy, (void)mean, (void)scale,
        (void)out, (void)plane, (void)n;
    return 0;
#endif
}

/* Writes rows [r0, r1) of the pyramid level of scale s (ws columns) into x
 * [1, 3, r1 - r0, ws], normalised. Column tables are in d->col_*. */
static void sample_level_rows(const fm_detector *d, const src_view *v, double s, int r0,
                              int r1, int ws, float *x)
{
    const float *mean = d->pnet.mean, *scale = d->pnet.scale;
    size_t plane = (size_t)(r1 - r0) * (size_t)ws;
    const float one = 1.0f;
    const int vector = (int)fm_nn_isa_now(); /* FM_NN_ISA_*: 0 none, 2 AVX-512 */
    const int cols_inside = all_inside(d->col_x0, d->col_x1, ws);
    int *mi = d->col_masks;
    const size_t mw = (size_t)d->max_level_w;
    const sample_masks m = {{mi, mi + mw}, {mi + 2 * mw, mi + 3 * mw},
                            {mi + 4 * mw, mi + 5 * mw}, {mi + 6 * mw, mi + 7 * mw}, mi + 8 * mw};
    int masks = 0; /* m filled */
    for (int oy = r0; oy < r1; oy++) {
        int y0, y1;
        float fy;
        level_axis(oy, s, v->h, v->pad, v->img->h, &y0, &y1, &fy);
        const uint8_t *row0 = row_ptr(v->img, y0), *row1 = row_ptr(v->img, y1);
        float *out = x + (size_t)(oy - r0) * (size_t)ws;
        /* the next row's source rows, ahead of their use: a photo's pyramid reads
         * them from memory (7 MB of pixels, each level again), and the row kernel's
         * scattered reads do not bring the hardware's prefetch along */
        if (oy + 1 < r1) {
            int n0, n1;
            float nf;
            level_axis(oy + 1, s, v->h, v->pad, v->img->h, &n0, &n1, &nf);
            const int c0 = d->col_x0[0] > 0 ? d->col_x0[0] : 0;
            const int c1 = d->col_x1[ws - 1] > 0 ? d->col_x1[ws - 1] : v->img->w - 1;
            for (int r = 0; r < 2; r++) {
                const uint8_t *p = row_ptr(v->img, r ? n1 : n0);
                if (!p || (r && n1 == n0))
                    continue;
                for (int b = 3 * c0; b < 3 * c1 + 3; b += 64)
                    __builtin_prefetch(p + b);
            }
        }
        if (y0 >= 0 && y1 >= 0 && cols_inside) {
            sample_row_inside(v->img, y0, y1, d->col_x0, d->col_x1, d->col_fx, fy, mean,
                              scale, out, plane, ws, vector);
            continue;
        }
        int ox = 0;
        if (vector) {
            if (!masks) {
                fill_masks(d->col_x0, d->col_x1, ws, &m);
                masks = 1;
            }
            ox = sample_row_masked(v->img, y0, y1, &m, d->col_fx, fy, mean, scale, out, plane,
                                   ws);
        }
        for (; ox < ws; ox++) {
            int x0 = d->col_x0[ox], x1 = d->col_x1[ox];
            float fx = d->col_fx[ox];
            for (int c = 0; c < 3; c++) {
                float top = (one - fx) * fetch(row0, y0, x0, c) + fx * fetch(row0, y0, x1, c);
                float bot = (one - fx) * fetch(row1, y1, x0, c) + fx * fetch(row1, y1, x1, c);
                float val = (one - fy) * top + fy * bot;
                out[(size_t)c * plane + ox] = (val - mean[c]) * scale[c];
            }
        }
    }
}

/* Sample positions of a crop axis: a1 + (o + 0.5) * (a2 - a1) / size over an axis of
 * n (padded) pixels; neighbours outside [0, n) read as zero (IDX_ZERO), inside the
 * border as the border value. */
static void crop_axis(double a1, double a2, int size, int n, int pad, int n_img, int *i0,
                      int *i1, float *f)
{
    for (int o = 0; o < size; o++) {
        double p = a1 + ((double)o + 0.5) * (a2 - a1) / (double)size;
        double fl = floor(p);
        f[o] = (float)(p - fl);
        if (fl < -2.0)
            fl = -2.0;
        if (fl > (double)n)
            fl = (double)n;
        int k = (int)fl;
        i0[o] = k >= 0 && k < n ? axis_index(k, pad, n_img) : IDX_ZERO;
        i1[o] = k + 1 >= 0 && k + 1 < n ? axis_index(k + 1, pad, n_img) : IDX_ZERO;
    }
}

/* Writes the size x size crop of box (zero outside the padded picture), normalised
 * with net's mean/scale, into x (3 planes of size x size). */
static void sample_crop(const mtcnn_net *net, const src_view *v, const double box[4],
                        int size, float *x)
{
    int xi0[48], xi1[48], yi0[48], yi1[48];
    float fx[48], fy[48];
    crop_axis(box[0], box[2], size, v->w, v->pad, v->img->w, xi0, xi1, fx);
    crop_axis(box[1], box[3], size, v->h, v->pad, v->img->h, yi0, yi1, fy);
    size_t plane = (size_t)size * (size_t)size;
    const float one = 1.0f;
    const int vector = (int)fm_nn_isa_now(); /* FM_NN_ISA_*: 0 none, 2 AVX-512 */
    const int cols_inside = all_inside(xi0, xi1, size);
    int mi[9][48];
    const sample_masks cm = {{mi[0], mi[1]}, {mi[2], mi[3]}, {mi[4], mi[5]}, {mi[6], mi[7]},
                             mi[8]};
    int masks = 0; /* cm filled */
    for (int oy = 0; oy < size; oy++) {
        int y0 = yi0[oy], y1 = yi1[oy];
        if (y0 >= 0 && y1 >= 0 && cols_inside) {
            sample_row_inside(v->img, y0, y1, xi0, xi1, fx, fy[oy], net->mean, net->scale,
                              x + (size_t)oy * (size_t)size, plane, size, vector);
            continue;
        }
        const uint8_t *r0 = row_ptr(v->img, y0), *r1 = row_ptr(v->img, y1);
        int ox = 0;
        if (vector) {
            if (!masks) {
                fill_masks(xi0, xi1, size, &cm);
                masks = 1;
            }
            ox = sample_row_masked(v->img, y0, y1, &cm, fx, fy[oy], net->mean, net->scale,
                                   x + (size_t)oy * (size_t)size, plane, size);
        }
        for (; ox < size; ox++) {
            int x0 = xi0[ox], x1 = xi1[ox];
            for (int c = 0; c < 3; c++) {
                float top = (one - fx[ox]) * fetch(r0, y0, x0, c) + fx[ox] * fetch(r0, y0, x1, c);
                float bot = (one - fx[ox]) * fetch(r1, y1, x0, c) + fx[ox] * fetch(r1, y1, x1, c);
                float val = (one - fy[oy]) * top + fy[oy] * bot;
                x[(size_t)c * plane + (size_t)oy * (size_t)size + ox] =
                    (val - net->mean[c]) * net->scale[c];
            }
        }
    }
}

/* See detect-impl.h. */
void fm_mtcnn_sample_crop(const fm_image *img, int pad, const double box[4], int size,
                          const float mean[3], const float scale[3], float *x)
{
    mtcnn_net net;
    memset(&net, 0, sizeof net);
    for (int c = 0; c < 3; c++) {
        net.mean[c] = mean[c];
        net.scale[c] = scale[c];
    }
    const src_view v = {img, pad, img->w + 2 * pad, img->h + 2 * pad};
    sample_crop(&net, &v, box, size, x);
}

/* See detect-impl.h. */
int fm_mtcnn_sample_level(const fm_image *img, int pad, double s, const float mean[3],
                          const float scale[3], float *x)
{
    const src_view v = {img, pad, img->w + 2 * pad, img->h + 2 * pad};
    const int ws = (int)ceil((double)v.w * s), hs = (int)ceil((double)v.h * s);
    fm_detector *d = calloc(1, sizeof *d);
    int *cols = malloc(sizeof(int) * 11 * (size_t)ws);
    float *fx = malloc(sizeof(float) * (size_t)ws);
    if (d && cols && fx) {
        d->max_level_w = ws;
        d->col_x0 = cols;
        d->col_x1 = cols + ws;
        d->col_masks = cols + 2 * (size_t)ws;
        d->col_fx = fx;
        for (int c = 0; c < 3; c++) {
            d->pnet.mean[c] = mean[c];
            d->pnet.scale[c] = scale[c];
        }
        for (int ox = 0; ox < ws; ox++)
            level_axis(ox, s, v.w, v.pad, img->w, &d->col_x0[ox], &d->col_x1[ox],
                       &d->col_fx[ox]);
        sample_level_rows(d, &v, s, 0, hs, ws, x);
    }
    const int ok = d && cols && fx;
    free(d);
    free(cols);
    free(fx);
    return ok ? ws : -1;
}

/* softmax(l0, l1)[1] in double, rounded to float32. */
static float face_prob(float l0, float l1)
{
    return (float)(1.0 / (1.0 + exp((double)l0 - (double)l1)));
}

/* ---- stages -------------------------------------------------------------------- */

/* See detect-impl.h. */
int fm_mtcnn_cross_nms_always = 0;

/* The candidates of the level lists in all[0..n) whose score is above min_score,
 * through NMS, regression and squaring, into out; returns their count. */
static int pnet_finish(fm_detector *d, fm_mtcnn_cand *all, int n, double min_score,
                       fm_mtcnn_cand *out)
{
    /* The candidates come from the levels' own NMS at 0.5, so two of one level overlap
     * by at most 0.5; a level's boxes are all 12 / s wide, so two of different levels
     * overlap by at most their areas' ratio, scale_factor^2 or less. Below 0.7 (the
     * default 0.709 gives 0.503) the cross-level NMS at 0.7 removes nothing and keeps
     * the candidates in score order: that order is all it has to give, without its
     * quadratic pass over thousands of candidates (2% of a photo's time). The margin
     * covers the rounding of the boxes' corners. */
    const double f = d->opts.scale_factor;
    int kept;
    if (!fm_mtcnn_cross_nms_always && f * f < 0.7 * (1 - 1e-9)) {
        kept = 0;
        for (int i = 0; i < n; i++)
            if ((double)all[i].score > min_score)
                d->keep[kept++] = i;
        if (kept > 0)
            sort_order(all, kept, d->keep, d->tmp);
    } else {
        kept = nms_above(all, n, min_score, 0.7, FM_MTCNN_NMS_UNION, d->keep, d->order, d->tmp,
                         d->flag);
    }
    int m = 0;
    for (int k = 0; k < kept; k++) {
        fm_mtcnn_cand c = all[d->keep[k]];
        fm_mtcnn_regress(c.box, c.reg);
        if (fm_mtcnn_square(c.box))
            out[m++] = c;
    }
    return m;
}

/* Stage 1: P-Net over the pyramid; leaves the boxes entering R-Net in d->cand_b
 * (*n_out of them) and, with opts.retry, the second look's in d->cand_r (*n_retry):
 * the maps are computed once, and each list is what a pass with its own threshold
 * alone would give (the cells above the lower threshold are kept, each list's NMS
 * sees only those above its own). */
static fm_status stage_pnet(fm_detector *d, const src_view *v, double min_face,
                            double min_search, fm_detect_times *t, int *n_out, int *n_retry,
                            fm_error *err)
{
    const fm_detect_opts *o = &d->opts;
    const double th1 = o->pnet_threshold, th2 = o->retry_pnet_threshold;
    const int two = o->retry != 0;
    const double th_lo = two && th2 < th1 ? th2 : th1;
    /* face_prob(l0, l1) > th_lo needs l1 - l0 > log(th_lo / (1 - th_lo)); with a margin
     * of 1e-3 (far more than the float rounding of the probability), a cell below
     * dl_min cannot pass, and every other cell is decided by face_prob as before */
    const double dl_min = th_lo <= 0.0   ? -HUGE_VAL
                          : th_lo >= 1.0 ? HUGE_VAL
                                         : log(th_lo / (1.0 - th_lo)) - 1e-3;
    *n_retry = 0;
    int levels = fm_mtcnn_scales(v->w, v->h, min_face, o->scale_factor, o->max_side,
                                 d->scales, FM_DETECT_MAX_LEVELS);
    if (levels < 0 || levels > FM_DETECT_MAX_LEVELS)
        return fm_error_set(err, FM_ERR_INTERNAL, "detector: %d pyramid levels", levels);
    /* min_face's levels, less those for faces under min_search (detect.h, "Smallest
     * face") */
    const int first = fm_mtcnn_first_level(d->scales, levels, min_search);
    t->levels = levels - first;
    t->levels_skipped = first;
    fm_mtcnn_topk all, all2;
    fm_mtcnn_topk_init(&all, d->cand_a, d->cand_cap);
    /* the second look's cross-level list: in cand_r until it is finished */
    fm_mtcnn_topk_init(&all2, two ? d->cand_r : d->cand_a, two ? d->cand_cap : 0);
    int32_t seq_all = 0, seq_all2 = 0;
    for (int li = first; li < levels; li++) {
        double s = d->scales[li];
        double hd = ceil((double)v->h * s), wd = ceil((double)v->w * s);
        if (wd > (double)d->max_level_w || hd > (double)d->max_level_w)
            return fm_error_set(err, FM_ERR_INTERNAL,
                                "detector: level %.0fx%.0f exceeds the sized width %d", wd, hd,
                                d->max_level_w);
        int hs = (int)hd, ws = (int)wd;
        int oh = fm_mtcnn_pnet_out(hs), ow = fm_mtcnn_pnet_out(ws);
        if (oh < 1 || ow < 1)
            return fm_error_set(err, FM_ERR_INTERNAL, "detector: level %dx%d too small", ws,
                                hs);
        for (int ox = 0; ox < ws; ox++)
            level_axis(ox, s, v->w, v->pad, v->img->w, &d->col_x0[ox], &d->col_x1[ox],
                       &d->col_fx[ox]);
        t->pnet_pixels += (double)hs * (double)ws;

        fm_mtcnn_topk lvl;
        fm_mtcnn_topk_init(&lvl, d->level, d->level_cap);
        for (int i0 = 0; i0 < oh; i0 += FM_DETECT_PNET_STRIP_ROWS) {
            int i1 = i0 + FM_DETECT_PNET_STRIP_ROWS < oh ? i0 + FM_DETECT_PNET_STRIP_ROWS : oh;
            int r0 = 2 * i0, r1 = 2 * i1 + 10 < hs ? 2 * i1 + 10 : hs;
            fm_tensor x, logits, reg;
            fm_status st = act_view(&d->bufs, BUF_X, 0, 1, 3, r1 - r0, ws, &x, err);
            if (st)
                return st;
            sample_level_rows(d, v, s, r0, r1, ws, x.data);
            st = pnet_forward(&d->pnet, d->arena, &d->bufs, &x, &logits, &reg, err);
            fm_arena_reset(d->arena, d->mark);
            if (st)
                return st;
            if (logits.h != i1 - i0 || logits.w != ow)
                return fm_error_set(err, FM_ERR_INTERNAL,
                                    "detector: P-Net strip gave %dx%d cells, expected %dx%d",
                                    logits.w, logits.h, ow, i1 - i0);
            size_t plane = (size_t)logits.h * (size_t)ow;
            for (int ii = 0; ii < i1 - i0; ii++) {
                for (int j = 0; j < ow; j++) {
                    size_t k = (size_t)ii * (size_t)ow + (size_t)j;
                    /* most cells are far below the threshold: skip them on the logit
                     * difference, without the exponential */
                    if ((double)logits.data[plane + k] - (double)logits.data[k] < dl_min)
                        continue;
                    float score = face_prob(logits.data[k], logits.data[plane + k]);
                    if (!((double)score > th_lo))
                        continue;
                    int i = i0 + ii;
                    fm_mtcnn_cand c;
                    c.box[0] = 2.0 * j / s - 0.5;
                    c.box[1] = 2.0 * i / s - 0.5;
                    c.box[2] = (2.0 * j + 12) / s - 0.5;
                    c.box[3] = (2.0 * i + 12) / s - 0.5;
                    c.score = score;
                    for (int r = 0; r < 4; r++)
                        c.reg[r] = reg.data[(size_t)r * plane + k];
                    c.seq = (int32_t)(i * ow + j);
                    fm_mtcnn_topk_push(&lvl, &c);
                }
            }
        }
        fm_mtcnn_topk_finish(&lvl);
        if (lvl.dropped)
            t->truncated = 1;
        /* Each pass's survivors of the level, in the cross-level lists: the first
         * pass's in all, the second look's in all2. */
        for (int pass = 0; pass < 1 + two; pass++) {
            fm_mtcnn_topk *to = pass ? &all2 : &all;
            int kept = nms_above(lvl.c, lvl.n, pass ? th2 : th1, 0.5, FM_MTCNN_NMS_UNION,
                                 d->keep, d->order, d->tmp, d->flag);
            for (int k = 0; k < kept; k++) {
                fm_mtcnn_cand c = lvl.c[d->keep[k]];
                c.seq = pass ? seq_all2++ : seq_all++;
                fm_mtcnn_topk_push(to, &c);
            }
        }
    }
    fm_mtcnn_topk_finish(&all);
    if (all.dropped)
        t->truncated = 1;
    if (two) {
        fm_mtcnn_topk_finish(&all2);
        if (all2.dropped)
            t->truncated = 1;
        /* through cand_b, which the first pass's list overwrites next */
        *n_retry = pnet_finish(d, all2.c, all2.n, -1, d->cand_b);
        memcpy(d->cand_r, d->cand_b, (size_t)*n_retry * sizeof *d->cand_r);
    }
    *n_out = pnet_finish(d, all.c, all.n, -1, d->cand_b);
    return FM_OK;
}

/* Stage 2: R-Net on d->cand_b[0..n); leaves the boxes entering O-Net in d->cand_a. */
static fm_status stage_rnet(fm_detector *d, const src_view *v, int n, int *n_out,
                            fm_error *err)
{
    fm_mtcnn_cand *c = d->cand_b;
    for (int k0 = 0; k0 < n; k0 += FM_DETECT_RNET_BATCH) {
        int nb = n - k0 < FM_DETECT_RNET_BATCH ? n - k0 : FM_DETECT_RNET_BATCH;
        fm_tensor x, logits, reg;
        fm_status st = act_view(&d->bufs, BUF_X, 0, nb, 3, 24, 24, &x, err);
        if (st)
            return st;
        for (int k = 0; k < nb; k++)
            sample_crop(&d->rnet, v, c[k0 + k].box, 24, x.data + (size_t)k * 3 * 24 * 24);
        st = rnet_forward(&d->rnet, d->arena, &d->bufs, &x, &logits, &reg, err);
        fm_arena_reset(d->arena, d->mark);
        if (st)
            return st;
        for (int k = 0; k < nb; k++) {
            c[k0 + k].score = face_prob(logits.data[2 * k], logits.data[2 * k + 1]);
            for (int r = 0; r < 4; r++)
                c[k0 + k].reg[r] = reg.data[4 * k + r];
        }
    }
    int m = 0;
    for (int k = 0; k < n; k++)
        if ((double)c[k].score > d->rnet_th)
            c[m++] = c[k];
    int kept = fm_mtcnn_nms(c, m, 0.7, FM_MTCNN_NMS_UNION, d->keep, d->order, d->tmp, d->flag);
    int out = 0;
    for (int k = 0; k < kept; k++) {
        fm_mtcnn_cand b = c[d->keep[k]];
        fm_mtcnn_regress(b.box, b.reg);
        if (fm_mtcnn_square(b.box))
            d->cand_a[out++] = b;
    }
    *n_out = out;
    return FM_OK;
}

/* Maps a coordinate of the padded picture to the original image: minus the border,
 * then from decoded pixels to original pixels (r original pixels per decoded one). */
static float to_orig(double u, int pad, double r)
{
    u -= pad;
    return (float)(r == 1.0 ? u : (u + 0.5) * r - 0.5);
}

/* Stage 3: O-Net on d->cand_a[0..n); writes the faces. */
static fm_status stage_onet(fm_detector *d, const src_view *v, int n, double r,
                            fm_face *faces, int cap, int *n_faces, fm_detect_times *t,
                            fm_error *err)
{
    fm_mtcnn_cand *c = d->cand_a;
    float *pts = d->pts;
    for (int k0 = 0; k0 < n; k0 += FM_DETECT_ONET_BATCH) {
        int nb = n - k0 < FM_DETECT_ONET_BATCH ? n - k0 : FM_DETECT_ONET_BATCH;
        fm_tensor x, logits, reg, lm;
        fm_status st = act_view(&d->bufs, BUF_X, 0, nb, 3, 48, 48, &x, err);
        if (st)
            return st;
        for (int k = 0; k < nb; k++)
            sample_crop(&d->onet, v, c[k0 + k].box, 48, x.data + (size_t)k * 3 * 48 * 48);
        st = onet_forward(&d->onet, d->arena, &d->bufs, &x, &logits, &reg, &lm, err);
        fm_arena_reset(d->arena, d->mark);
        if (st)
            return st;
        for (int k = 0; k < nb; k++) {
            c[k0 + k].score = face_prob(logits.data[2 * k], logits.data[2 * k + 1]);
            for (int q = 0; q < 4; q++)
                c[k0 + k].reg[q] = reg.data[4 * k + q];
            memcpy(pts + (size_t)(k0 + k) * 10, lm.data + (size_t)k * 10, 10 * sizeof(float));
        }
    }
    int m = 0;
    for (int k = 0; k < n; k++) {
        if (!((double)c[k].score > d->onet_th))
            continue;
        fm_mtcnn_cand b = c[k];
        /* Landmarks from the cropped box (the box is regressed afterwards). */
        double bw = b.box[2] - b.box[0], bh = b.box[3] - b.box[1];
        float *p = pts + (size_t)k * 10;
        double lx[5], ly[5];
        for (int q = 0; q < 5; q++) {
            lx[q] = b.box[0] + bw * (double)p[q];
            ly[q] = b.box[1] + bh * (double)p[5 + q];
        }
        fm_mtcnn_regress(b.box, b.reg);
        c[m] = b;
        /* Compact in place: candidate k moves to slot m <= k, its landmarks (now in
         * original-image coordinates) to pts slot m; slot k was read above and slots
         * above k are untouched. */
        float *dst = pts + (size_t)m * 10;
        for (int q = 0; q < 5; q++) {
            dst[2 * q] = to_orig(lx[q], v->pad, r);
            dst[2 * q + 1] = to_orig(ly[q], v->pad, r);
        }
        m++;
    }
    int kept = fm_mtcnn_nms(c, m, 0.7, FM_MTCNN_NMS_MIN, d->keep, d->order, d->tmp, d->flag);
    t->onet_boxes = kept;
    int lim = kept < d->opts.max_faces ? kept : d->opts.max_faces;
    if (lim > cap)
        lim = cap;
    for (int k = 0; k < lim; k++) {
        const fm_mtcnn_cand *b = &c[d->keep[k]];
        fm_face *f = &faces[k];
        for (int q = 0; q < 4; q++)
            f->box[q] = to_orig(b->box[q], v->pad, r);
        f->score = b->score;
        memcpy(f->landmarks, pts + (size_t)d->keep[k] * 10, sizeof f->landmarks);
    }
    *n_faces = lim;
    return FM_OK;
}

const float fm_detect_cropped_landmarks[10] = {0.295f, 0.291f, 0.691f, 0.292f, 0.492f,
                                               0.521f, 0.312f, 0.692f, 0.672f, 0.693f};

void fm_detect_fixed(const fm_image *img, const float frac[10], fm_face *face)
{
    const int w = img->orig_w > 0 ? img->orig_w : img->w;
    const int h = img->orig_h > 0 ? img->orig_h : img->h;
    memset(face, 0, sizeof *face);
    face->box[2] = (float)w;
    face->box[3] = (float)h;
    face->score = 1.0f;
    for (int k = 0; k < 5; k++) { /* shares of the edges -> pixel centres */
        face->landmarks[2 * k] = frac[2 * k] * (float)w - 0.5f;
        face->landmarks[2 * k + 1] = frac[2 * k + 1] * (float)h - 0.5f;
    }
}

/* R-Net and O-Net on the n candidates in d->cand_b with thresholds th (R-Net's,
 * O-Net's), their times, work and counts added to *tt. */
static fm_status refine(fm_detector *d, const src_view *v, int n, double r,
                        const double th[2], fm_face *faces, int cap, int *n_faces,
                        fm_detect_times *tt, fm_error *err)
{
    d->rnet_th = th[0];
    d->onet_th = th[1];
    *n_faces = 0;
    fm_arena_reset(d->arena, d->mark);
    int found_before = tt->onet_boxes; /* a first look's (0 before a second) */
    tt->onet_boxes = 0;
    double t1 = fm_now_ms(), f1 = fm_arena_flop(d->arena);
    int n2 = 0;
    fm_status st = n > 0 ? stage_rnet(d, v, n, &n2, err) : FM_OK;
    double t2 = fm_now_ms(), f2 = fm_arena_flop(d->arena);
    tt->rnet_ms += t2 - t1;
    tt->rnet_flop += f2 - f1;
    tt->pnet_boxes += n;
    tt->rnet_boxes += n2;
    if (!st && n2 > 0)
        st = stage_onet(d, v, n2, r, faces, cap, n_faces, tt, err);
    tt->onet_boxes += found_before;
    tt->onet_ms += fm_now_ms() - t2;
    tt->onet_flop += fm_arena_flop(d->arena) - f2;
    return st;
}

fm_status fm_detect(fm_detector *d, const fm_image *img, fm_face *faces, int cap,
                    int *n_faces, fm_detect_times *t, fm_error *err)
{
    fm_detect_times tt;
    memset(&tt, 0, sizeof tt);
    if (n_faces)
        *n_faces = 0;
    if (t)
        *t = tt;
    if (!d || !img || !n_faces || cap < 0 || (cap > 0 && !faces))
        return fm_error_set(err, FM_ERR_INVALID, "detect: NULL argument or negative cap");
    if (img->w < 1 || img->h < 1 || !img->data || img->stride < 3 * (size_t)img->w)
        return fm_error_set(err, FM_ERR_INVALID, "detect: image %dx%d (stride %zu) has no "
                            "usable pixels", img->w, img->h, img->stride);
    src_view v = {img, 0, img->w, img->h};
    if (d->opts.pad > 0) {
        int64_t big = img->w > img->h ? img->w : img->h;
        int64_t p = llround(d->opts.pad * (double)big);
        if (big + 2 * p > INT_MAX / 4)
            return fm_error_set(err, FM_ERR_INVALID, "detect: image %dx%d too large to pad",
                                img->w, img->h);
        v.pad = (int)p;
        v.w = img->w + 2 * v.pad;
        v.h = img->h + 2 * v.pad;
    }
    double num = img->scale_num > 0 ? img->scale_num : 1;
    double den = img->scale_denom > 0 ? img->scale_denom : 1;
    double r = den / num; /* decoded -> original */
    double min_face = d->opts.min_face * num / den;
    /* the smallest face searched, in decoded pixels: min_face or the share of the
     * original image's long side (its border included, as for the other rules), the
     * larger */
    double long_side = img->orig_w > 0 && img->orig_h > 0
                           ? (double)(img->orig_w > img->orig_h ? img->orig_w : img->orig_h)
                           : (double)(img->w > img->h ? img->w : img->h) * den / num;
    long_side += 2.0 * v.pad * den / num;
    double min_search = d->opts.min_face_frac * long_side;
    if (min_search < d->opts.min_face)
        min_search = d->opts.min_face;
    min_search = min_search * num / den;

    fm_arena_reset(d->arena, d->mark);
    double t0 = fm_now_ms(), f0 = fm_arena_flop(d->arena);
    int n1 = 0, n1r = 0;
    fm_status st = stage_pnet(d, &v, min_face, min_search, &tt, &n1, &n1r, err);
    tt.pnet_ms = fm_now_ms() - t0;
    tt.pnet_flop = fm_arena_flop(d->arena) - f0;
    const double first[2] = {d->opts.rnet_threshold, d->opts.onet_threshold};
    if (!st)
        st = refine(d, &v, n1, r, first, faces, cap, n_faces, &tt, err);
    if (!st && tt.onet_boxes == 0 && d->opts.retry) { /* the second look */
        const double second[2] = {d->opts.retry_rnet_threshold, d->opts.retry_onet_threshold};
        memcpy(d->cand_b, d->cand_r, (size_t)n1r * sizeof *d->cand_b);
        tt.retried = 1;
        st = refine(d, &v, n1r, r, second, faces, cap, n_faces, &tt, err);
    }
    fm_arena_reset(d->arena, d->mark);
    if (st)
        *n_faces = 0;
    if (t)
        *t = tt;
    return st;
}
