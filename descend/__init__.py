"""descend: the textbook's gradient-descent rules, exactly, as composable drop-in torch.optim optimizers."""

from descend import blocks
from descend.blocks import auto
from descend.core import Block, ChainOptimizer, Hyper
from descend.optimizers import (
    GD,
    SGD,
    AdaDelta,
    AdaGrad,
    Adam,
    Adamax,
    AdamW,
    Lion,
    Momentum,
    NAdam,
    Nesterov,
    RAdam,
    RMSProp,
    available,
    create,
)
from descend.lr_find import LRFinder, lr_find  # the LR range test (a practitioner's tool; imports no lab)

__version__ = "0.1.0"

__all__ = ["GD", "Momentum", "Nesterov", "SGD", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "AdamW", "NAdam",
           "RAdam", "Adamax", "Lion", "ChainOptimizer", "Block", "Hyper", "blocks", "available", "create",
           "lr_find", "LRFinder", "auto"]
