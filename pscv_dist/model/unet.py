"""2D UNet as used by the weakly-supervised medical segmentation literature (WSL4MIS / PSCV).

Ronneberger et al., MICCAI 2015, in the WSL4MIS variant (Luo et al. 2022): each block
conv3x3-BN-LeakyReLU-Dropout-conv3x3-BN-LeakyReLU, encoder dropout 0.05/0.1/0.2/0.3/0.5, max-pool
down-sampling, transposed-conv up-sampling (METHOD.md), decoder without dropout, a 3x3 head to K
classes. At the defaults (width 16, depth 4, K=4) it has 1.944 M parameters; ``upsample="bilinear"``
(WSL4MIS's code: a 1x1 conv then bilinear x2) has 1.814 M. METHOD.md's "about 1.8-1.9 M" matches
the bilinear variant; we keep the transposed convolution it names as the default.
"""
from __future__ import annotations

import torch
from torch import nn

DEFAULT_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


def default_dropout(depth: int) -> tuple[float, ...]:
    """depth+1 encoder dropout rates: the literature's (0.05, 0.1, 0.2, 0.3) for the first levels
    (as many as there are, at most four), then 0.5 for every deeper level. Depth 4 gives exactly
    :data:`DEFAULT_DROPOUT`; depth 2 gives (0.05, 0.1, 0.5); depth 6 gives (..., 0.3, 0.5, 0.5, 0.5)."""
    shallow = min(depth, 4)
    return tuple(DEFAULT_DROPOUT[:shallow]) + (0.5,) * (depth + 1 - shallow)


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises in float32 when its input is in a lower precision.

    DeepSpeed's bf16 mode casts the parameters to bfloat16 but leaves the running statistics in
    float32; torch's CPU kernel refuses that mix, and bf16 running statistics would drift. Like
    apex's ``keep_batchnorm_fp32``, the statistics are computed and kept in float32 and the output
    is cast back. In float32 (or under autocast, which runs batch_norm in float32) this is plain
    ``nn.BatchNorm2d``; the state_dict keys are the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 or self.running_mean is None or x.dtype == self.running_mean.dtype:
            return super().forward(x)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        out = nn.functional.batch_norm(x.float(), self.running_mean, self.running_var, w, b, self.training,
                                       momentum, self.eps)
        return out.to(x.dtype)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), BatchNorm2d(cout), nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1), BatchNorm2d(cout), nn.LeakyReLU(),
        )


UPSAMPLE = ("transpose", "bilinear")


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, upsample: str = "transpose"):
        super().__init__()
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(cin, cskip, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(nn.Conv2d(cin, cskip, 1),
                                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
        self.conv = ConvBlock(2 * cskip, cout, 0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """UNet returning logits (B, K, H, W); softmax over dim 1 gives Ŷ.

    Args:
        in_channels: image channels (1 for MR/CT slices).
        num_classes: K, background included.
        base_width: channels of the first level; level i has base_width·2^i.
        depth: number of down-sampling steps; H and W must be divisible by 2^depth.
        dropout: encoder dropout per level (depth + 1 values); default :func:`default_dropout`
            (the literature's (0.05, 0.1, 0.2, 0.3, 0.5) at depth 4).
        upsample: ``transpose`` (2x2 transposed conv, default) or ``bilinear``.

    Raises:
        ValueError: invalid sizes, or an input whose H, W are not divisible by 2^depth.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base_width: int = 16, depth: int = 4,
                 dropout: tuple[float, ...] | None = None, upsample: str = "transpose"):
        super().__init__()
        if in_channels < 1 or num_classes < 2 or base_width < 1 or depth < 1:
            raise ValueError(f"need in_channels>=1, num_classes>=2, base_width>=1, depth>=1; got "
                             f"{in_channels}, {num_classes}, {base_width}, {depth}")
        if dropout is None:
            dropout = default_dropout(depth)
        dropout = tuple(float(p) for p in dropout)
        if len(dropout) != depth + 1 or not all(0 <= p < 1 for p in dropout):
            raise ValueError(f"dropout needs depth+1={depth + 1} values in [0, 1), got {dropout}")
        if upsample not in UPSAMPLE:
            raise ValueError(f"upsample must be one of {UPSAMPLE}, got {upsample!r}")
        self.depth, self.num_classes, self.in_channels = depth, num_classes, in_channels
        self.base_width, self.dropout, self.upsample = base_width, dropout, upsample
        ch = [base_width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList([ConvBlock(in_channels, ch[0], dropout[0])] +
                                     [ConvBlock(ch[i - 1], ch[i], dropout[i]) for i in range(1, depth + 1)])
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList([UpBlock(ch[i], ch[i - 1], ch[i - 1], upsample) for i in range(depth, 0, -1)])
        self.head = nn.Conv2d(ch[0], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.depth
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W) with H, W divisible by {m}, "
                             f"got {tuple(x.shape)}")
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)
