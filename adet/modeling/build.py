"""``build_model(cfg)``: the only place that turns a config into modules. Configs name the meta-architecture and the
backbone builder, so those two are looked up by name here; every constructor is called by keyword."""

from __future__ import annotations

import logging

import torch
from torch import nn

from adet.errors import ConfigError
from adet.layers import fold_frozen_batchnorm

from .backbone import build_fcos_resnet_fpn_backbone
from .embedmask import EmbedHead, EmbedMask, MaskBranch, ProposalHead
from .fcos import build_fcos

logger = logging.getLogger(__name__)

BACKBONES = {"build_fcos_resnet_fpn_backbone": build_fcos_resnet_fpn_backbone}
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    if cfg.MODEL.INFERENCE_DTYPE not in INFERENCE_DTYPES:
        raise ConfigError(f"MODEL.INFERENCE_DTYPE must be one of {sorted(INFERENCE_DTYPES)}, got "
                          f"'{cfg.MODEL.INFERENCE_DTYPE}'")
    backbone = BACKBONES[backbone_name](cfg)
    fcos = build_fcos(cfg, backbone.out_channels)
    em, fcos_cfg = cfg.MODEL.EMBEDMASK, cfg.MODEL.FCOS
    branch = em.MASK_BRANCH
    mask_branch = MaskBranch(
        in_channels={f: backbone.out_channels for f in backbone.out_features}, strides=backbone.strides,
        in_features=branch.IN_FEATURES, channels=branch.CHANNELS, out_channels=branch.OUT_CHANNELS,
        num_convs=branch.NUM_CONVS, norm=branch.NORM, semantic_loss_on=branch.SEMANTIC_LOSS_ON,
        num_classes=fcos_cfg.NUM_CLASSES, prior_prob=fcos_cfg.PRIOR_PROB, focal_alpha=fcos_cfg.LOSS_ALPHA,
        focal_gamma=fcos_cfg.LOSS_GAMMA)
    proposal_head = ProposalHead(
        in_channels=backbone.out_channels, strides=fcos_cfg.FPN_STRIDES, embed_dim=em.EMBED_DIM,
        prior_margin=em.PRIOR_MARGIN, margin_reduce_factor=em.MARGIN_REDUCE_FACTOR, variant=em.PROPOSAL_HEAD)
    pixel_head = EmbedHead(in_channels=branch.OUT_CHANNELS, embed_dim=em.EMBED_DIM)
    return EmbedMask(
        backbone=backbone, proposal_generator=fcos, mask_branch=mask_branch, proposal_head=proposal_head,
        pixel_head=pixel_head, pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
        mask_out_stride=em.MASK_OUT_STRIDE, max_proposals=em.MAX_PROPOSALS,
        topk_proposals_per_im=em.TOPK_PROPOSALS_PER_IM, mask_threshold=em.MASK_TH, mask_loss_type=em.MASK_LOSS_TYPE,
        loss_weights={"loss_fcos_cls": fcos_cfg.LOSS_WEIGHT_CLS, "loss_mask": em.MASK_LOSS_ALPHA},
        inference_dtype=INFERENCE_DTYPES[cfg.MODEL.INFERENCE_DTYPE])


META_ARCHITECTURES = {"EmbedMask": build_embedmask}


def build_model(cfg, device: str | torch.device | None = None) -> nn.Module:
    """The model named by ``MODEL.META_ARCHITECTURE``, randomly initialised, on ``MODEL.DEVICE`` (or ``device``).

    Every config value the model depends on is checked here, as a ConfigError naming the key. ``device="meta"``
    builds it without memory (the command line's check of a config before any work starts). Load weights with
    :class:`adet.checkpoint.DetectionCheckpointer`.
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCHITECTURES:
        raise ConfigError(f"MODEL.META_ARCHITECTURE: unknown architecture '{name}' (available: "
                          f"{sorted(META_ARCHITECTURES)})")
    target = resolve_device(cfg.MODEL.DEVICE) if device is None else torch.device(device)
    on_gpu = torch.device(cfg.MODEL.DEVICE).type == "cuda" and torch.cuda.is_available()
    if cfg.MODEL.INFERENCE_DTYPE == "float16" and not on_gpu:
        raise ConfigError("MODEL.INFERENCE_DTYPE float16 needs a GPU; use bfloat16 on the CPU")
    try:
        if target.type == "meta":
            with torch.device("meta"):
                return META_ARCHITECTURES[name](cfg)
        return META_ARCHITECTURES[name](cfg).to(target)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None


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
