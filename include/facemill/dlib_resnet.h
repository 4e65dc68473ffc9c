/* dlib_resnet.h - dlib's ResNet face descriptor as one network that inference and
 * training both run: its geometry, its parameters in one fixed order, and its forward
 * and backward passes over the engine's operations (worker/vision/arch_dlib_resnet.c).
 *
 * Why it exists: the backbone (backbone.c's architecture table, "dlib_resnet") and the
 * fine-tuner (worker/train/finetune.c) must compute the same network. One forward pass
 * serves both: inference runs it moving every block's result down the arena (little
 * memory), training runs it with a tape that keeps what the backward pass needs.
 *
 * The layer geometry is face-api.js's (what the weights were checked against): the 7x7
 * stem and the strided convolutions use no padding, the stem's max pool is 3x3/2
 * without padding, and a down-sampling block's shortcut is a 2x2/2 average pool with
 * zero channels up to the block's width, to which a convolution branch one pixel
 * smaller is added as if padded with a zero row at the bottom and column at the right.
 * For a 150x150 input: stem 72x72x32, pool 35x35x32, then 17x17x64, 8x8x128, 4x4x256
 * and 2x2x256, averaged to "pooled" (256) and multiplied by fc.weight to "embedding"
 * (128, not normalised).
 */
#ifndef FACEMILL_DLIB_RESNET_H
#define FACEMILL_DLIB_RESNET_H

#include "facemill/model.h"
#include "facemill/nn.h"
#include "facemill/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dlib ResNet's residual blocks: name, input and output channels, and whether the
 * block halves the resolution (3x3 stride-2 unpadded convolution; shortcut 2x2 average
 * pool, zero channels up to cout). */
typedef struct fm_dlib_block {
    const char *name;
    int cin, cout;
    int down;
} fm_dlib_block;
#define FM_DLIB_BLOCKS 14
extern const fm_dlib_block fm_dlib_blocks[FM_DLIB_BLOCKS];

#define FM_DLIB_STEM (-1)  /* the stem, "before" block 0, where a block index is asked */
#define FM_DLIB_POOLED 256 /* length of the pooled features */
#define FM_DLIB_EMBED 128  /* length of the embedding */

/* The parameters, in one fixed order: fc.weight [128, 256], the stem's
 * conv32_down.weight [32, 3, 7, 7] and .bias [32], then per block i from
 * FM_DLIB_BLOCK0 + 4 i: NAME.conv1.weight [cout, cin, 3, 3], NAME.conv1.bias [cout],
 * NAME.conv2.weight [cout, cout, 3, 3], NAME.conv2.bias [cout] (scale layers folded
 * into the convolutions, models/tools/faceapi2fmm.py). */
enum {
    FM_DLIB_FC = 0,
    FM_DLIB_STEM_W = 1,
    FM_DLIB_STEM_B = 2,
    FM_DLIB_BLOCK0 = 3,
    FM_DLIB_PARAMS = FM_DLIB_BLOCK0 + 4 * FM_DLIB_BLOCKS
};

/* The model file's name (up to 63 bytes with its NUL) and shape (ndim 1..4, unused
 * dims 1) of parameter k (0 <= k < FM_DLIB_PARAMS, asserted). */
void fm_dlib_param(int k, char name[64], int *ndim, int dims[4]);

/* One tensor per parameter, in the order above: views of a mapped model, of a
 * trainer's parameter vector, or of its gradient (never owned). */
typedef struct fm_dlib_weights {
    fm_tensor t[FM_DLIB_PARAMS];
} fm_dlib_weights;

/* Looks up every parameter of m with its shape (FM_ERR_NOT_FOUND / FM_ERR_FORMAT with
 * the tensor's name) and points w at the mapped data, read only (the engine never
 * writes inputs, which makes the cast safe); m must outlive w. */
fm_status fm_dlib_bind(const fm_model *m, fm_dlib_weights *w, fm_error *err);

/* What a forward pass keeps for the backward pass. Tensors live in the arena the
 * forward pass ran on, valid until it is reset below them. */
typedef struct fm_dlib_tape {
    int keep_from;                     /* IN: the first block whose activations are kept,
                                          FM_DLIB_STEM (everything, the stem's output
                                          too) .. FM_DLIB_BLOCKS (nothing); blocks before
                                          it run as inference runs them */
    fm_tensor x;                       /* the input */
    fm_tensor stem;                    /* ReLU'd stem convolution (keep_from stem) */
    fm_tensor bin[FM_DLIB_BLOCKS];     /* block inputs (kept from block keep_from on) */
    fm_tensor t1[FM_DLIB_BLOCKS];      /* ReLU'd first convolutions */
    fm_tensor t2[FM_DLIB_BLOCKS];      /* second convolutions; a block without down-
                                          sampling adds its shortcut in place: t2 is y */
    fm_tensor y[FM_DLIB_BLOCKS];       /* block outputs, after the final ReLU */
} fm_dlib_tape;

/* Runs the network with weights w on x [n, 3, H, W] (normalised input; H, W >= 131 so
 * that the last block has pixels). pooled and embedding: NULL (not wanted) or
 * caller-allocated [n, 256, 1, 1] and [n, 128, 1, 1]; the embedding needs
 * w->t[FM_DLIB_FC]. Intermediates come from a (measuring: shapes only, no data
 * touched) and stay there: with tape NULL, every block's result moves down to where
 * the arena stood at the call, so it holds about two blocks at a time; with a tape,
 * the activations of blocks from tape->keep_from on are kept and recorded in it.
 * Errors name the layer ("dlib_resnet: conv64_down: ..."). */
fm_status fm_dlib_forward(fm_arena *a, const fm_dlib_weights *w, const fm_tensor *x,
                          fm_tensor *pooled, fm_tensor *embedding, fm_dlib_tape *tape,
                          fm_error *err);

/* The backward pass of the forward pass recorded in tape: given dpooled [n, 256, 1, 1],
 * the gradient of a loss with respect to the pooled features, ACCUMULATES into g (views
 * shaped like w; grad.h's conventions) the gradients of the parameters of blocks from
 * .. FM_DLIB_BLOCKS - 1, and of the stem when from is FM_DLIB_STEM; the other entries
 * of g are not touched. from >= tape->keep_from. Scratch and the activation gradients
 * come from a. */
fm_status fm_dlib_backward(fm_arena *a, const fm_dlib_weights *w, const fm_dlib_tape *tape,
                           const fm_tensor *dpooled, int from, fm_dlib_weights *g,
                           fm_error *err);

#ifdef __cplusplus
}
#endif
#endif
