"""Loss functions: functional pieces, the CV loss and the named training objectives."""
from .contrastive import ContrastiveVarianceLoss, draw_positives
from .functional import (entropy_minimization, mumford_shah, partial_cross_entropy, soft_dice_loss,
                         total_variation, variance_maps)
from .objectives import OBJECTIVES, build_objective, objective_names

__all__ = ["ContrastiveVarianceLoss", "draw_positives", "entropy_minimization", "mumford_shah",
           "partial_cross_entropy", "soft_dice_loss", "total_variation", "variance_maps", "OBJECTIVES",
           "build_objective", "objective_names"]
