"""Default values of every config key EmbedMask reads: ``get_cfg()`` describes the released model.

The values are the official ``Base-EmbedMask.yaml`` over detectron2's and AdelaiDet's defaults (the first author's
fork, yinghdb/AdelaiDet), so ``build_model(get_cfg())`` builds the released R-50 architecture, the official YAML
files load to the same configs as before, and a YAML file written for the official code means the same thing here.
Only keys this implementation reads are here (they are what a dumped config.yaml holds); the other keys an official
config may carry, including those with a single possible value here, are dropped on loading by ``compat.py``.
"""

from .config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "EmbedMask"
# "cuda" falls back to "cpu" with a warning when no GPU is visible (see adet.modeling.resolve_device).
_C.MODEL.DEVICE = "cuda"
# A path, a "detectron2://..." URL (resolved to a local cache), or "" for random init.
_C.MODEL.WEIGHTS = ""
# Precision of the network at inference: "float32", "bfloat16" (fast on CPUs with AVX512-BF16/AMX and on GPUs) or
# "float16" (GPUs). Box decoding, NMS and the coupling stay in float32 whatever the choice; training is unaffected
# (SOLVER.AMP sets its precision).
_C.MODEL.INFERENCE_DTYPE = "float32"
# Mean and std of the BGR 0..255 input. std 1 because the MSRA ImageNet weights expect unscaled pixels.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_fcos_resnet_fpn_backbone"
# Stages up to this one (1 = stem, 2 = stem + res2) are frozen.
_C.MODEL.BACKBONE.FREEZE_AT = 2

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
_C.MODEL.RESNETS.NUM_GROUPS = 1
_C.MODEL.RESNETS.NORM = "FrozenBN"
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# The MSRA weights put the stride-2 of each stage's first block in its 1x1 conv.
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES5_DILATION = 1
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
_C.MODEL.FPN.OUT_CHANNELS = 256

# FCOS (AdelaiDet defaults)
_C.MODEL.FCOS = CN()
_C.MODEL.FCOS.NUM_CLASSES = 80
_C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 128]
_C.MODEL.FCOS.PRIOR_PROB = 0.01
_C.MODEL.FCOS.INFERENCE_TH_TEST = 0.05
_C.MODEL.FCOS.NMS_TH = 0.6
_C.MODEL.FCOS.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.FCOS.POST_NMS_TOPK_TEST = 100
_C.MODEL.FCOS.TOP_LEVELS = 2
_C.MODEL.FCOS.NORM = "GN"
_C.MODEL.FCOS.USE_SCALE = True
# Multiply class scores by centerness before the inference threshold (AdelaiDet's default is False).
_C.MODEL.FCOS.THRESH_WITH_CTR = True
_C.MODEL.FCOS.LOSS_ALPHA = 0.25
_C.MODEL.FCOS.LOSS_GAMMA = 2.0
_C.MODEL.FCOS.LOSS_WEIGHT_CLS = 1.0
_C.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]
_C.MODEL.FCOS.NUM_CLS_CONVS = 4
_C.MODEL.FCOS.NUM_BOX_CONVS = 4
_C.MODEL.FCOS.NUM_SHARE_CONVS = 0
_C.MODEL.FCOS.CENTER_SAMPLE = True
_C.MODEL.FCOS.POS_RADIUS = 1.5

# EmbedMask (yinghdb/AdelaiDet adet/config/defaults.py)
_C.MODEL.EMBEDMASK = CN()
_C.MODEL.EMBEDMASK.MASK_OUT_STRIDE = 4
# Mask-loss proposals: a random MAX_PROPOSALS of the positive locations (-1: all), or TOPK_PROPOSALS_PER_IM per image.
_C.MODEL.EMBEDMASK.MAX_PROPOSALS = 500
_C.MODEL.EMBEDMASK.TOPK_PROPOSALS_PER_IM = -1
_C.MODEL.EMBEDMASK.EMBED_DIM = 16
_C.MODEL.EMBEDMASK.PRIOR_MARGIN = 2.0
_C.MODEL.EMBEDMASK.MARGIN_REDUCE_FACTOR = 32.0
_C.MODEL.EMBEDMASK.MASK_LOSS_TYPE = "Lovasz"
_C.MODEL.EMBEDMASK.SAMPLE_IN_MASK = False
_C.MODEL.EMBEDMASK.MASK_LOSS_ALPHA = 1.0
# "Conv1_Conv3" (the released models: a 1x1 conv to 128 channels before the 3x3 heads) or "Conv3".
_C.MODEL.EMBEDMASK.PROPOSAL_HEAD = "Conv1_Conv3"
_C.MODEL.EMBEDMASK.MASK_TH = 0.5
_C.MODEL.EMBEDMASK.MASK_BRANCH = CN()
_C.MODEL.EMBEDMASK.MASK_BRANCH.OUT_CHANNELS = 128
_C.MODEL.EMBEDMASK.MASK_BRANCH.IN_FEATURES = ["p3", "p4", "p5"]
_C.MODEL.EMBEDMASK.MASK_BRANCH.CHANNELS = 128
_C.MODEL.EMBEDMASK.MASK_BRANCH.NORM = "BN"
_C.MODEL.EMBEDMASK.MASK_BRANCH.NUM_CONVS = 4
_C.MODEL.EMBEDMASK.MASK_BRANCH.SEMANTIC_LOSS_ON = True

# ---------------------------------------------------------------------------------------------------------------------
# Input and data
# ---------------------------------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)
# "choice": one of MIN_SIZE_TRAIN per image; "range": uniform in [MIN_SIZE_TRAIN[0], MIN_SIZE_TRAIN[1]].
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
_C.INPUT.HFLIP_TRAIN = True
_C.INPUT.FORMAT = "BGR"
_C.INPUT.MASK_FORMAT = "polygon"  # or "bitmask"

_C.DATASETS = CN()
_C.DATASETS.TRAIN = ("coco_2017_train",)
_C.DATASETS.TEST = ("coco_2017_val",)

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# ---------------------------------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 90000
_C.SOLVER.BASE_LR = 0.01
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
# None: biases (norm biases included) decay with WEIGHT_DECAY, the detectron2 v0.4 rule the released EmbedMask
# weights were trained with (spec section 7).
_C.SOLVER.WEIGHT_DECAY_BIAS = None
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (60000, 80000)
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Total images per step over all processes.
_C.SOLVER.IMS_PER_BATCH = 16
# When > 0 and the world size differs, IMS_PER_BATCH, BASE_LR, steps and periods are rescaled (detectron2's rule).
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
_C.SOLVER.AMP = CN({"ENABLED": False})
# Mixed precision's type: "auto" is bfloat16 where the GPU computes it natively (Ampere and later) and on the CPU,
# float16 (with a loss scaler) on older GPUs; or "float16" / "bfloat16".
_C.SOLVER.AMP.PRECISION = "auto"

# ---------------------------------------------------------------------------------------------------------------------
# Test, output, misc
# ---------------------------------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.EVAL_PERIOD = 0
# Test-time augmentation (adet/engine/inference/tta.py): every MIN_SIZES scale (long side <= MAX_SIZE), each also
# flipped when FLIP; the detections of all of them merged by NMS.
_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True
# Sliced inference (adet/engine/inference/sliced.py): images cut into overlapping tiles of SIZE (h, w) pixels,
# predicted at their own resolution and merged; for images much larger than the test size.
_C.TEST.SLICE = CN({"ENABLED": False})
_C.TEST.SLICE.SIZE = (800, 800)
_C.TEST.SLICE.OVERLAP = 0.5  # measured: benchmarks/sliced_mosaic.py (0.2: -13.6 bbox AP, 7x the duplicates)
_C.TEST.SLICE.FULL_IMAGE = True  # also one pass over the whole image, for objects larger than a tile
_C.TEST.SLICE.MATCH_THRESHOLD = 0.5  # intersection over the smaller mask, in the window both passes saw
_C.TEST.SLICE.BATCH_SIZE = 4  # tiles per model call

_C.OUTPUT_DIR = "./output"
# < 0: a different random seed per run; >= 0: deterministic data order and initialisation.
_C.SEED = -1
# Reproducible training (README, "Reproducibility"): torch's deterministic algorithms (an op without one warns, naming
# itself), deterministic cuDNN, a fixed cuBLAS workspace, and the upsampling gradient without atomic adds on CUDA.
# CPU training with a fixed SEED is bit-reproducible for a given thread count without it.
_C.DETERMINISTIC = False
# Timeout in seconds of every collective between processes (a dead process ends the others' wait after it); 0: 1800
# with NCCL (GPUs), 300 with gloo (CPU processes). Waiting for rank 0's evaluation is allowed longer (4 hours).
_C.DIST_TIMEOUT = 0
# torch.backends.cudnn.benchmark: faster convolutions for inputs of few distinct sizes, not bit-reproducible.
_C.CUDNN_BENCHMARK = False
# torch.set_float32_matmul_precision: "" leaves torch's default, else "highest", "high" (TF32) or "medium".
_C.FLOAT32_PRECISION = ""


def get_cfg() -> CN:
    """A fresh copy of the default config: every key EmbedMask reads, set as the released models were trained."""
    return _C.clone()
