/* nn_optim.c - the optimiser step of include/facemill/grad.h: AdamW and SGD with
 * momentum over a flat group of parameters. Both trainers update through it, so a
 * checkpoint of either stores the same two moments and the same step means the same
 * arithmetic. */
#include "facemill/grad.h"

#include <assert.h>
#include <math.h>

void fm_optim_update(const fm_optim_step *s, float *p, const float *g, float *m, float *v,
                     size_t count)
{
    assert(s && (count == 0 || (p && g && m)));
    const double lr = s->lr, wd = s->weight_decay;
    if (s->kind == FM_OPTIM_SGD) {
        const double mom = s->momentum;
        for (size_t j = 0; j < count; j++) {
            m[j] = (float)(mom * m[j] + g[j]);
            p[j] = (float)(p[j] - lr * (m[j] + wd * p[j]));
        }
        return;
    }
    assert(s->kind == FM_OPTIM_ADAMW && s->t >= 1 && (count == 0 || v));
    const double b1 = FM_ADAM_BETA1, b2 = FM_ADAM_BETA2, eps = FM_ADAM_EPS;
    const double c1 = 1 - pow(b1, (double)s->t), c2 = 1 - pow(b2, (double)s->t);
    /* the moments are rounded to float before they are used, as they are stored: a
     * run resumed from a checkpoint then continues with the same bits */
    for (size_t j = 0; j < count; j++) {
        m[j] = (float)(b1 * m[j] + (1 - b1) * g[j]);
        v[j] = (float)(b2 * v[j] + (1 - b2) * (double)g[j] * g[j]);
        double upd = (m[j] / c1) / (sqrt(v[j] / c2) + eps) + wd * p[j];
        p[j] = (float)(p[j] - lr * upd);
    }
}
