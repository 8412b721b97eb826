"""Backbones, heads, losses and fine-tuning schemes (see ``docs/training.md``)."""

from svdh.models.backbones import BACKBONES, BackboneSpec, get_backbone
from svdh.models.heads import TASKS, TRANSFORMS
from svdh.models.net import (
    SvdhNet,
    average_raw,
    build_model,
    model_from_config,
    predict_outputs,
    read_weights_file,
    transfer_weights,
)
from svdh.models.schemes import Scheme

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "Scheme",
    "SvdhNet",
    "TASKS",
    "TRANSFORMS",
    "average_raw",
    "build_model",
    "get_backbone",
    "model_from_config",
    "predict_outputs",
    "read_weights_file",
    "transfer_weights",
]
