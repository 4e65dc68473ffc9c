/* backbone-impl.h - what an architecture provides to backbone.c. Each architecture
 * lives in worker/vision/arch_NAME.c and exports one const fm_arch_ops, listed in the
 * table in backbone.c. */
#ifndef FACEMILL_BACKBONE_IMPL_H
#define FACEMILL_BACKBONE_IMPL_H

#include "facemill/backbone.h"
#include "facemill/dlib_resnet.h"
#include "facemill/model.h"
#include "facemill/nn.h"

typedef struct fm_arch_ops {
    const char *name; /* general.architecture */

    /* Looks up and shape-checks every tensor the network needs in m (which outlives
     * the state) and returns a state the other calls get (owned by backbone.c,
     * released with unbind). Writes the output lengths to dims. */
    fm_status (*bind)(const fm_model *m, void **state, int dims[FM_BACKBONE_OUTPUT_COUNT],
                      fm_error *err);
    void (*unbind)(void *state);

    /* Runs the network on x [n, 3, H, W] (normalised input). Intermediates come from
     * a (which may be measuring: then no data is touched). Writes each requested
     * output out[k] (NULL = not wanted; else [n, dims[k], 1, 1], caller-allocated).
     * The arena is reset by the caller after the call. */
    fm_status (*forward)(void *state, fm_arena *a, const fm_tensor *x,
                         fm_tensor *out[FM_BACKBONE_OUTPUT_COUNT], fm_error *err);
} fm_arch_ops;

/* The architectures, one per worker/vision/arch_NAME.c, listed in backbone.c's table. */
extern const fm_arch_ops fm_arch_dlib_resnet;
extern const fm_arch_ops fm_arch_facenet_irv1;

#endif
