"""The amount recogniser: a CRNN (CNN features → BiLSTM → per-frame digit/blank scores, CTC).

Segmentation-free: the network reads the whole field and emits one score vector per
`FRAME_STRIDE` input columns; CTC decoding turns frames into the digit string, so touching or
broken digits never need to be cut apart. Class 0 is the CTC blank, class ``d + 1`` digit ``d``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from inkwell.cheques.preprocess import FRAME_STRIDE, INPUT_HEIGHT

BLANK = 0
NUM_CLASSES = 11
ALPHABET = "0123456789"


@dataclass(frozen=True)
class CRNNConfig:
    """Architecture hyper-parameters; stored with every registered version."""

    height: int = INPUT_HEIGHT
    channels: tuple[int, int, int, int] = (32, 48, 64, 96)
    hidden: int = 96
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CRNNConfig:
        channels = tuple(int(c) for c in data.get("channels", cls.channels))
        if len(channels) != 4:
            raise ValueError(f"CRNN needs 4 channel widths, got {channels}")
        return cls(
            height=int(data.get("height", INPUT_HEIGHT)),
            channels=(channels[0], channels[1], channels[2], channels[3]),
            hidden=int(data.get("hidden", cls.hidden)),
            dropout=float(data.get("dropout", cls.dropout)),
        )


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class CRNN(nn.Module):
    """Input (N, 1, 32, W) floats, ink = 1, W a multiple of 4. Output (N, W/4, 11) logits."""

    def __init__(self, config: CRNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CRNNConfig()
        c0, c1, c2, c3 = self.config.channels
        if self.config.height % 16:
            raise ValueError("CRNN input height must be a multiple of 16")
        self.features = nn.Sequential(
            *_conv(1, c0, stride=2),  # H/2, W/2: cheap stem, most pixels are background
            *_conv(c0, c1),
            nn.MaxPool2d(2),  # H/4, W/4: one column per output frame from here on
            *_conv(c1, c2),
            *_conv(c2, c2),
            nn.MaxPool2d((2, 1)),  # H/8
            *_conv(c2, c3),
            *_conv(c3, c3),
            nn.MaxPool2d((2, 1)),  # H/16
        )
        rows = self.config.height // 16
        self.project = nn.Sequential(
            nn.Linear(c3 * rows, self.config.hidden), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(self.config.dropout)
        self.rnn = nn.LSTM(
            self.config.hidden, self.config.hidden, bidirectional=True, batch_first=True
        )
        self.classify = nn.Linear(2 * self.config.hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, T, 11).

        In eval mode, `frames` (real frames per field) makes the BiLSTM skip the padding of
        shorter fields, so a field reads the same alone or in a padded batch. Training does
        not pack: packed sequences take a slow non-fused LSTM path on CPU (~2x a step), and
        training batches are grouped by width, so there is little padding to learn from.
        """
        f = self.features(x)
        n, c, h, w = f.shape
        seq = self.dropout(self.project(f.permute(0, 3, 1, 2).reshape(n, w, c * h)))
        if frames is not None and not self.training and bool((frames < w).any()):
            packed = pack_padded_sequence(
                seq, frames.clamp(1, w).cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = self.rnn(packed)
            seq, _ = pad_packed_sequence(out, batch_first=True, total_length=w)
        else:
            seq, _ = self.rnn(seq)
        return self.classify(self.dropout(seq))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def batch_inputs(fields: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad prepared fields (H, W_i) to one (N, 1, H, W) tensor; returns it and the widths.

    Width is padded with background (0) up to a multiple of `FRAME_STRIDE`.
    """
    if not fields:
        raise ValueError("batch_inputs needs at least one field")
    height = fields[0].shape[0]
    widths = [f.shape[1] for f in fields]
    padded = -(-max(widths) // FRAME_STRIDE) * FRAME_STRIDE
    batch = np.zeros((len(fields), 1, height, padded), np.float32)
    for i, f in enumerate(fields):
        batch[i, 0, :, : f.shape[1]] = f
    return torch.from_numpy(batch), torch.tensor(widths, dtype=torch.long)


def frames_for(widths: torch.Tensor) -> torch.Tensor:
    """Number of output frames the recogniser produces for inputs of these widths."""
    return torch.div(widths + FRAME_STRIDE - 1, FRAME_STRIDE, rounding_mode="floor")
