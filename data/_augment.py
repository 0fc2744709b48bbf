"""Augmentation settings: plain data, importable without Keras (study files are validated with it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentParams:
    rotation: float = 0.0  # degrees
    width_shift: float = 0.0  # fraction of the width
    height_shift: float = 0.0  # fraction of the height
    horizontal_flip: bool = False
    vertical_flip: bool = False
    zoom: float = 0.0  # fraction
    fill_mode: str = "nearest"

    def __post_init__(self) -> None:
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees but got {self.rotation!r}")
        for name in ("width_shift", "height_shift", "zoom"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1) but got {value!r}")
        if self.fill_mode not in ("nearest", "reflect", "wrap", "constant"):
            raise ValueError(f"fill_mode must be nearest, reflect, wrap or constant but got {self.fill_mode!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.rotation or self.width_shift or self.height_shift or self.horizontal_flip
                    or self.vertical_flip or self.zoom)


SEED000_AUGMENT = AugmentParams(rotation=15, width_shift=0.1, height_shift=0.1, horizontal_flip=True)
