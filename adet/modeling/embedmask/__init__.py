from .embedmask import LOSS_TERMS, EmbedMask, NetworkOutputs
from .heads import EmbedHead, ProposalHead
from .mask_branch import MaskBranch
from .positives import Positives, select_for_mask_loss

__all__ = ["LOSS_TERMS", "EmbedMask", "EmbedHead", "MaskBranch", "NetworkOutputs", "Positives", "ProposalHead",
           "select_for_mask_loss"]
