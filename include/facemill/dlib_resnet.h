/* dlib_resnet.h - the dlib ResNet's geometry, shared by its forward pass
 * (worker/vision/arch_dlib_resnet.c) and the fine-tuning trainer (worker/train/
 * finetune.c), so that both walk the same network. */
#ifndef FACEMILL_DLIB_RESNET_H
#define FACEMILL_DLIB_RESNET_H

/* dlib ResNet's residual blocks (worker/vision/arch_dlib_resnet.c): name, input and output
 * channels, and whether the block halves the resolution (3x3 stride-2 unpadded
 * convolution; shortcut 2x2 average pool, zero channels up to cout). */
typedef struct fm_dlib_block {
    const char *name;
    int cin, cout;
    int down;
} fm_dlib_block;
#define FM_DLIB_BLOCKS 14
extern const fm_dlib_block fm_dlib_blocks[FM_DLIB_BLOCKS];

#endif
