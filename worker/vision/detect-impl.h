/* detect-impl.h - the box arithmetic of the MTCNN detector (worker/vision/detect.c), visible
 * to the detector and its unit test (tests/test_detect.c) only. Each function does
 * exactly what the specification at the top of tests/reference/mtcnn_ref.py says,
 * in the same order of double-precision operations, so results agree bit for bit
 * with the numpy reference given the same inputs. */
#ifndef FACEMILL_MTCNN_IMPL_H
#define FACEMILL_MTCNN_IMPL_H

#include <stdint.h>

/* A candidate face box: the box, the score of the stage that produced it, that
 * stage's regression, and its arrival number (used to restore arrival order after a
 * full buffer had to keep only the best candidates). */
typedef struct fm_mtcnn_cand {
    double box[4]; /* x1, y1, x2, y2 */
    float score;
    float reg[4];  /* dx1, dy1, dx2, dy2 */
    int32_t seq;
} fm_mtcnn_cand;

typedef enum fm_mtcnn_nms_mode {
    FM_MTCNN_NMS_UNION = 0, /* intersection over union */
    FM_MTCNN_NMS_MIN = 1,   /* intersection over the smaller area */
} fm_mtcnn_nms_mode;

/* Overlap of two boxes: inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1)),
 * area = w * h; inter / (area_a + area_b - inter) (union) or inter / min(area_a,
 * area_b) (min); 0 when that denominator is not > 0. */
double fm_mtcnn_overlap(const double a[4], const double b[4], fm_mtcnn_nms_mode mode);

/* Sorts the indices 0..n-1 of c by score, highest first, equal scores in index order
 * (a stable sort), into order[n]. tmp[n] is scratch. */
void fm_mtcnn_sort_by_score(const fm_mtcnn_cand *c, int n, int *order, int *tmp);

/* Greedy NMS over c[0..n-1]: walks the boxes by score (fm_mtcnn_sort_by_score) and
 * keeps a box unless its overlap with an already kept box is > threshold. Writes the
 * kept indices to keep[] in that order and returns their count. Scratch: order[n],
 * tmp[n] ints and flag[n] bytes (keep may be order). Nothing is allocated. */
int fm_mtcnn_nms(const fm_mtcnn_cand *c, int n, double threshold, fm_mtcnn_nms_mode mode,
                 int *keep, int *order, int *tmp, unsigned char *flag);

/* Box regression: w = x2 - x1, h = y2 - y1; x1 += dx1 * w, y1 += dy1 * h,
 * x2 += dx2 * w, y2 += dy2 * h. */
void fm_mtcnn_regress(double box[4], const float reg[4]);

/* Makes box the square of side max(w, h) with the same centre. Returns 1 when the
 * result is usable (all four coordinates finite and the side > 0), 0 when the box
 * must be dropped. */
int fm_mtcnn_square(double box[4]);

/* The pyramid scales for a w x h image: s0 = 12 / min_face, then s0 = min(s0,
 * max_side / max(w, h)) when max_side > 0; s_(k+1) = s_k * factor while
 * min(w, h) * s_k >= 12. Writes at most cap scales and returns how many there are
 * (which may exceed cap; -1 for min_face <= 0 or factor outside (0, 1)). */
int fm_mtcnn_scales(int w, int h, double min_face, double factor, double max_side,
                    double *scales, int cap);

/* The first of the n pyramid scales to run when faces smaller than min_search pixels
 * are not searched: level k is skipped while level k + 1 still finds faces of
 * min_search pixels (its window 12 / scales[k + 1] is at most min_search, with a
 * relative margin of 1e-9 for rounding). 0 when min_search <= 0 or n < 2. */
int fm_mtcnn_first_level(const double *scales, int n, double min_search);

/* Size of the P-Net output map for an input of h rows (or columns): ceil((h - 2) / 2)
 * - 4 (0 when h < 12). */
int fm_mtcnn_pnet_out(int h);

/* Keeps the cap best candidates of a stream, in arrival order. A fm_mtcnn_topk
 * appends until the buffer is full; after that each new candidate replaces the worst
 * one held (lowest score; of equal scores, the latest arrival) when it is better,
 * and is dropped otherwise. */
typedef struct fm_mtcnn_topk {
    fm_mtcnn_cand *c; /* cap entries, owned by the caller */
    int n, cap;
    int heap;         /* 1 once full: c is a heap with the worst candidate at c[0] */
    int dropped;      /* candidates dropped so far */
} fm_mtcnn_topk;

/* Starts an empty buffer over c[cap]. */
void fm_mtcnn_topk_init(fm_mtcnn_topk *k, fm_mtcnn_cand *c, int cap);

/* Offers one candidate (copied). */
void fm_mtcnn_topk_push(fm_mtcnn_topk *k, const fm_mtcnn_cand *cand);

/* Puts the held candidates back in arrival (seq) order; call after the last push. */
void fm_mtcnn_topk_finish(fm_mtcnn_topk *k);

/* The detector's crop sampling (R-Net's 24x24, O-Net's 48x48 inputs), for tests: the
 * size x size crop of box (in the coordinates of img inside a border of pad pixels of
 * FM_DETECT_PAD_VALUE; zero outside that), bilinear, normalised (v - mean) * scale,
 * into x (3 planes of size x size). size <= 48. The kernels in effect
 * (fm_nn_set_isa) sample it; every set gives the same bits. */
struct fm_image;
/* 1: the detector runs its cross-level NMS of P-Net's candidates even where it cannot
 * remove any (scale_factor^2 below its threshold of 0.7), for tests that compare the
 * two. 0 by default. */
extern int fm_mtcnn_cross_nms_always;
/* The same for a whole pyramid level of scale s (ceil((w + 2 pad) s) x ceil((h + 2 pad) s)
 * samples into x, 3 planes): returns its width, -1 when out of memory. */
int fm_mtcnn_sample_level(const struct fm_image *img, int pad, double s, const float mean[3],
                          const float scale[3], float *x);
void fm_mtcnn_sample_crop(const struct fm_image *img, int pad, const double box[4], int size,
                          const float mean[3], const float scale[3], float *x);

#endif
