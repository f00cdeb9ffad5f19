"""Helpers shared by the cheque tests: a hand-set CRNN that always reads "5", test images."""

from __future__ import annotations

import numpy as np
import torch

from inkwell.cheques.model import CRNN, CRNNConfig
from inkwell.cheques.reader import ChequeReader

TINY = CRNNConfig(channels=(8, 8, 16, 16), hidden=16)


def always_five() -> ChequeReader:
    model = CRNN(TINY)
    with torch.no_grad():
        model.classify.weight.zero_()
        model.classify.bias.fill_(-5.0)
        model.classify.bias[6] = 5.0  # class d + 1 is digit d
    meta = ChequeReader.build_meta(TINY, calibration={"temperature": 1.0, "review_threshold": 0.5})
    return ChequeReader(model, meta)


def field_image() -> np.ndarray:
    image = np.full((50, 200), 235, np.uint8)
    image[15:35, 30:170] = 20  # some ink
    return image


def shifted_field(shift: int) -> np.ndarray:
    """`field_image` with its ink moved `shift` px right: another image, the same reading."""
    image = np.full((50, 200), 235, np.uint8)
    image[15:35, 10 + shift : 150 + shift] = 20
    return image
