"""CNN backbones by name, with their fine-tuning stages and default Grad-CAM layer.

``BACKBONES`` is the one registry: every backbone a user can name on the command line,
the torchvision builder and ImageNet weights behind it, and its *family*, which says

* which final classifier layer is dropped (the backbone then yields pooled features),
* its **stages**, from the stem to the top, as module-name prefixes. Fine-tuning schemes
  (``svdh.models.schemes``) freeze, unfreeze and scale learning rates per stage,
* its **Grad-CAM candidate layers** with their output strides: the layer used is the
  deepest whose map is at least 12 x 12 at the input size (``cam_layer_for``).

Adding a backbone of a known family is one line in ``BACKBONES``; a new family is one
``Family`` entry more. Module names are those of the torchvision model (``layer4``,
``features.18``); ``SvdhNet`` prefixes them with ``backbone.``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from svdh.core.errors import BadConfigError


@dataclass(frozen=True)
class Family:
    """What backbones of one torchvision family have in common."""

    name: str
    classifier: str  # dotted path of the module replaced by Identity (the ImageNet classifier)
    stages: tuple[tuple[str, ...], ...]  # module-name prefixes per stage, stem first
    #: Grad-CAM candidate layers (module path inside the backbone, output stride), deepest
    #: first; ``BackboneSpec.cam_layer_for`` picks the deepest that gives a readable map.
    cam_layers: tuple[tuple[str, int], ...]


def _idx(prefix: str, lo: int, hi: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in range(lo, hi + 1))


RESNET = Family(
    "resnet",
    classifier="fc",
    # stem, then the four residual stages (strides 4, 8, 16, 32)
    stages=(("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)),
    cam_layers=(("layer4", 32), ("layer3", 16), ("layer2", 8), ("layer1", 4)),
)
MOBILENET_V2 = Family(
    "mobilenet_v2",
    classifier="classifier",  # Dropout + Linear; SvdhNet's head has its own dropout
    # grouped by output stride: 2, 4, 8, 16, 32 (features.18 is the 1x1 conv to 1280 channels)
    stages=(
        _idx("features", 0, 1),
        _idx("features", 2, 3),
        _idx("features", 4, 6),
        _idx("features", 7, 13),
        _idx("features", 14, 18),
    ),
    cam_layers=(("features.18", 32), ("features.13", 16), ("features.6", 8), ("features.3", 4)),
)
EFFICIENTNET = Family(
    "efficientnet",
    classifier="classifier",
    # stem+MBConv1 (stride 2), then by output stride 4, 8, 16, 32 (+ the 1x1 head conv)
    stages=(
        _idx("features", 0, 1),
        ("features.2",),
        ("features.3",),
        _idx("features", 4, 5),
        _idx("features", 6, 8),
    ),
    cam_layers=(("features.8", 32), ("features.5", 16), ("features.3", 8), ("features.2", 4)),
)
CONVNEXT = Family(
    "convnext",
    classifier="classifier.2",  # keep the final LayerNorm2d (classifier.0) with the top stage
    # stem + stage 1, then each downsampling layer with the stage it feeds
    stages=(
        _idx("features", 0, 1),
        _idx("features", 2, 3),
        _idx("features", 4, 5),
        (*_idx("features", 6, 7), "classifier.0"),
    ),
    cam_layers=(("features.7", 32), ("features.5", 16), ("features.3", 8), ("features.1", 4)),
)
DENSENET = Family(
    "densenet",
    classifier="classifier",
    stages=(
        ("features.conv0", "features.norm0"),
        ("features.denseblock1", "features.transition1"),
        ("features.denseblock2", "features.transition2"),
        ("features.denseblock3", "features.transition3"),
        # norm5 is followed by an in-place ReLU in torchvision's forward, which breaks
        # gradient hooks on its output; Grad-CAM therefore targets denseblock4.
        ("features.denseblock4", "features.norm5"),
    ),
    cam_layers=(
        ("features.denseblock4", 32),
        ("features.denseblock3", 16),
        ("features.denseblock2", 8),
        ("features.denseblock1", 4),
    ),
)
VGG_BN = Family(
    "vgg_bn",
    classifier="classifier.6",  # keep the two 4096-wide fully connected layers as a stage
    # the five conv blocks (each ends in a max-pool), then the fully connected layers
    stages=(
        _idx("features", 0, 6),
        _idx("features", 7, 13),
        _idx("features", 14, 23),
        _idx("features", 24, 33),
        _idx("features", 34, 43),
        _idx("classifier", 0, 5),
    ),
    # the ReLU before each max-pool
    cam_layers=(("features.42", 16), ("features.32", 8), ("features.22", 4)),
)


#: Grad-CAM maps at least this many cells wide, so that neighbouring joints fall in
#: different cells; ``CAM_DEFAULT_SIZE`` is the input size assumed when none is given.
CAM_MIN_CELLS = 12
CAM_DEFAULT_SIZE = 96


@dataclass(frozen=True)
class BackboneSpec:
    """One named backbone: torchvision architecture, ImageNet weights, family."""

    name: str
    family: Family
    weights: str | None  # torchvision weights enum, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    arch: str = ""  # torchvision builder name; defaults to ``name``
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra builder arguments

    @property
    def builder(self) -> str:
        return self.arch or self.name

    @property
    def stages(self) -> tuple[tuple[str, ...], ...]:
        return self.family.stages

    @property
    def cam_layer(self) -> str:
        """The Grad-CAM layer for the demo's input size (``CAM_DEFAULT_SIZE``); use
        ``cam_layer_for`` where the input size is known."""
        return self.cam_layer_for(CAM_DEFAULT_SIZE)

    def cam_layer_for(self, image_size: int, min_cells: int = CAM_MIN_CELLS) -> str:
        """The deepest Grad-CAM candidate whose map is at least ``min_cells`` wide at
        ``image_size`` (the shallowest candidate when none is); deeper layers carry more of
        the task, but a 3 x 3 map (layer4 at 96 px) cannot tell one joint from another."""
        for path, stride in self.family.cam_layers:
            if image_size // stride >= min_cells:
                return path
        return self.family.cam_layers[-1][0]

    def cam_map_size(self, image_size: int, min_cells: int = CAM_MIN_CELLS) -> int:
        """Side of the Grad-CAM map of ``cam_layer_for(image_size)``, in cells."""
        path = self.cam_layer_for(image_size, min_cells)
        stride = dict(self.family.cam_layers)[path]
        return -(-image_size // stride)


#: Every backbone by name. One line adds one (of a family above).
BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec("resnet18", RESNET, "ResNet18_Weights.IMAGENET1K_V1"),
        BackboneSpec("resnet34", RESNET, "ResNet34_Weights.IMAGENET1K_V1"),
        BackboneSpec("resnet50", RESNET, "ResNet50_Weights.IMAGENET1K_V2"),
        BackboneSpec("resnet101", RESNET, "ResNet101_Weights.IMAGENET1K_V2"),
        BackboneSpec("resnet152", RESNET, "ResNet152_Weights.IMAGENET1K_V2"),
        BackboneSpec("mobilenet_v2", MOBILENET_V2, "MobileNet_V2_Weights.IMAGENET1K_V2"),
        BackboneSpec("densenet121", DENSENET, "DenseNet121_Weights.IMAGENET1K_V1"),
        BackboneSpec("efficientnet_b0", EFFICIENTNET, "EfficientNet_B0_Weights.IMAGENET1K_V1"),
        BackboneSpec("convnext_tiny", CONVNEXT, "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"),
        BackboneSpec("vgg16_bn", VGG_BN, "VGG16_BN_Weights.IMAGENET1K_V1"),
        # Narrow MobileNetV2 (no ImageNet weights): fast on CPUs, for tests and quick demos.
        BackboneSpec("mobilenet_v2_050", MOBILENET_V2, None, "mobilenet_v2", {"width_mult": 0.5}),
    )
}


def get_backbone(name: str) -> BackboneSpec:
    """The registry entry of ``name``, or a one-line error listing the choices."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise BadConfigError(
            f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}"
        ) from None


def stage_of(spec: BackboneSpec, param_name: str) -> int | None:
    """Index of the stage (0 = stem) that a backbone parameter/module name belongs to."""
    for i, prefixes in enumerate(spec.stages):
        for p in prefixes:
            if param_name == p or param_name.startswith(p + "."):
                return i
    return None
