"""``build_model(cfg)``: the only place that turns a config into modules. Configs name the meta-architecture and the
backbone builder, so those two are looked up by name here."""

from __future__ import annotations

import logging

import torch
from torch import nn

from adet.config import ConfigError
from adet.layers import fold_frozen_batchnorm

from .backbone import build_fcos_resnet_fpn_backbone
from .embedmask import EmbedHead, EmbedMask, MaskBranch, ProposalHead
from .fcos import build_fcos

logger = logging.getLogger(__name__)

BACKBONES = {"build_fcos_resnet_fpn_backbone": build_fcos_resnet_fpn_backbone}


def resolve_device(requested: str) -> torch.device:
    """``MODEL.DEVICE`` as a torch.device; "cuda" on a machine without a usable GPU falls back to the CPU."""
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is '%s' but no CUDA GPU is available; running on the CPU", requested)
        return torch.device("cpu")
    return device


def build_embedmask(cfg) -> EmbedMask:
    backbone_name = cfg.MODEL.BACKBONE.NAME
    if backbone_name not in BACKBONES:
        raise ConfigError(f"MODEL.BACKBONE.NAME: unknown backbone '{backbone_name}' (available: {sorted(BACKBONES)})")
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME != "FCOS":
        raise ConfigError(f"MODEL.PROPOSAL_GENERATOR.NAME: EmbedMask needs 'FCOS', got "
                          f"'{cfg.MODEL.PROPOSAL_GENERATOR.NAME}'")
    backbone = BACKBONES[backbone_name](cfg)
    fcos = build_fcos(cfg, backbone.out_channels)
    em = cfg.MODEL.EMBEDMASK
    branch = em.MASK_BRANCH
    channels = {f: backbone.out_channels for f in backbone.out_features}
    mask_branch = MaskBranch(channels, backbone.strides, branch.IN_FEATURES, branch.CHANNELS, branch.OUT_CHANNELS,
                             branch.NUM_CONVS, branch.NORM, branch.SEMANTIC_LOSS_ON, cfg.MODEL.FCOS.NUM_CLASSES,
                             cfg.MODEL.FCOS.PRIOR_PROB, cfg.MODEL.FCOS.LOSS_ALPHA, cfg.MODEL.FCOS.LOSS_GAMMA)
    if mask_branch.out_stride % em.MASK_OUT_STRIDE:
        raise ConfigError(f"MODEL.EMBEDMASK.MASK_OUT_STRIDE ({em.MASK_OUT_STRIDE}) must divide the mask-branch "
                          f"stride ({mask_branch.out_stride})")
    proposal_head = ProposalHead(backbone.out_channels, cfg.MODEL.FCOS.FPN_STRIDES, em.EMBED_DIM, em.PRIOR_MARGIN,
                                 em.MARGIN_REDUCE_FACTOR, em.PROPOSAL_HEAD)
    pixel_head = EmbedHead(branch.OUT_CHANNELS, em.EMBED_DIM)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.MODEL.INFERENCE_DTYPE not in dtypes:
        raise ConfigError(f"MODEL.INFERENCE_DTYPE must be one of {sorted(dtypes)}, got '{cfg.MODEL.INFERENCE_DTYPE}'")
    return EmbedMask(backbone, fcos, mask_branch, proposal_head, pixel_head, cfg.MODEL.PIXEL_MEAN,
                     cfg.MODEL.PIXEL_STD, em.MASK_OUT_STRIDE, em.MAX_PROPOSALS, em.TOPK_PROPOSALS_PER_IM, em.MASK_TH,
                     em.MASK_LOSS_TYPE, em.MASK_LOSS_ALPHA, dtypes[cfg.MODEL.INFERENCE_DTYPE])


META_ARCHITECTURES = {"EmbedMask": build_embedmask}


def build_model(cfg) -> nn.Module:
    """The model named by ``MODEL.META_ARCHITECTURE``, randomly initialised, on ``MODEL.DEVICE``.

    Load weights with :class:`adet.checkpoint.DetectionCheckpointer`.
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCHITECTURES:
        raise ConfigError(f"MODEL.META_ARCHITECTURE: unknown architecture '{name}' (available: "
                          f"{sorted(META_ARCHITECTURES)})")
    try:
        model = META_ARCHITECTURES[name](cfg)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None
    device = resolve_device(cfg.MODEL.DEVICE)
    if model.inference_dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("MODEL.INFERENCE_DTYPE float16 needs a GPU; use bfloat16 on the CPU")
    return model.to(device)


def prepare_for_inference(model: nn.Module, channels_last: bool | None = None) -> nn.Module:
    """Eval mode, frozen BatchNorms folded into their convolutions (one op less per conv), and on the CPU the
    channels-last memory format that oneDNN's convolutions run fastest in. Results equal up to float rounding.
    For models that only predict: checkpoints cannot be loaded into them afterwards."""
    model.eval()
    folded = fold_frozen_batchnorm(model)
    if channels_last is None:
        channels_last = model.device.type == "cpu"
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model.input_memory_format = torch.channels_last
    logger.debug("Folded %d frozen BatchNorms into convolutions; channels-last: %s", folded, channels_last)
    return model
