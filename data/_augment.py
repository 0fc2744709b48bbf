"""Augmentation settings: plain data, importable without Keras (study files are validated with it)."""

from __future__ import annotations

from dataclasses import dataclass, fields

AFFINE = ("rotation", "width_shift", "height_shift", "horizontal_flip", "vertical_flip", "zoom", "fill_mode")


@dataclass(frozen=True)
class AugmentParams:
    """Seed 000's affine augmentation (one RandomAffine layer), then the policies Keras 3 ships:
    RandAugment and RandomErasing inside the model graph like it; MixUp and CutMix on the batches
    (they mix the labels too, so they cannot run inside the model: search.trial._mixing)."""

    rotation: float = 0.0  # degrees
    width_shift: float = 0.0  # fraction of the width
    height_shift: float = 0.0  # fraction of the height
    horizontal_flip: bool = False
    vertical_flip: bool = False
    zoom: float = 0.0  # fraction
    fill_mode: str = "nearest"
    randaugment: bool = False  # keras.layers.RandAugment
    randaugment_ops: int = 2  # operations drawn per image
    randaugment_magnitude: float = 0.5  # RandAugment's factor, in (0, 1]
    random_erasing: float = 0.0  # the probability an image gets a random rectangle erased (RandomErasing)
    mixup: bool = False  # keras.layers.MixUp on each training batch
    mixup_alpha: float = 0.2  # its Beta(alpha, alpha)
    cutmix: bool = False  # keras.layers.CutMix on each training batch (with mixup too: one or the other, p = 0.5)
    cutmix_alpha: float = 1.0  # its Beta(alpha, alpha)

    def __post_init__(self) -> None:
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees but got {self.rotation!r}")
        for name in ("width_shift", "height_shift", "zoom"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1) but got {value!r}")
        if self.fill_mode not in ("nearest", "reflect", "wrap", "constant"):
            raise ValueError(f"fill_mode must be nearest, reflect, wrap or constant but got {self.fill_mode!r}")
        if not 1 <= self.randaugment_ops <= 14:
            raise ValueError(f"randaugment_ops must be in [1, 14] (RandAugment's operations) but got "
                             f"{self.randaugment_ops!r}")
        if not 0 < self.randaugment_magnitude <= 1:
            raise ValueError(f"randaugment_magnitude must be in (0, 1] but got {self.randaugment_magnitude!r}")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing is a probability, in [0, 1], but got {self.random_erasing!r}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0 (a Beta distribution's parameter) but got "
                                 f"{getattr(self, name)!r}")

    @property
    def affine(self) -> dict:
        """RandomAffine's arguments."""
        return {k: getattr(self, k) for k in AFFINE}

    @property
    def affine_enabled(self) -> bool:
        return bool(self.rotation or self.width_shift or self.height_shift or self.horizontal_flip
                    or self.vertical_flip or self.zoom)

    @property
    def soft_labels(self) -> bool:
        """MixUp and CutMix train on mixed one-hot labels (validation keeps the integer ones)."""
        return self.mixup or self.cutmix

    @property
    def enabled(self) -> bool:
        return self.affine_enabled or self.randaugment or bool(self.random_erasing) or self.soft_labels

    def hashed(self) -> dict:
        """For the drift guard: the policies only when not their defaults, so that studies written
        before them keep their hash."""
        defaults = AugmentParams()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in AFFINE or getattr(self, f.name) != getattr(defaults, f.name)}


SEED000_AUGMENT = AugmentParams(rotation=15, width_shift=0.1, height_shift=0.1, horizontal_flip=True)
