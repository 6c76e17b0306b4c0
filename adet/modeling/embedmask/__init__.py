from .embedmask import EmbedMask
from .heads import EmbedHead, ProposalHead
from .mask_branch import MaskBranch

__all__ = ["EmbedMask", "EmbedHead", "ProposalHead", "MaskBranch"]
