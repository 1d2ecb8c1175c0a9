"""The workbook's models, small enough to train on a laptop CPU, real enough to teach with.

* :class:`SmallResNet` -- a residual CNN (stem, a few stages of basic blocks with BatchNorm,
  global average pooling) split into ``backbone`` (what pretraining learns) and ``head``
  (the task-specific classifier that fine-tuning replaces).
* :func:`tiny_gpt` -- a ``transformers`` GPT-2 built from a config (no download), the same class a
  learner will later load with ``from_pretrained("gpt2")``.
* Small utilities every notebook needs: counting and freezing parameters, swapping heads.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

#: Bumped whenever :class:`SmallResNet` computes a different function with the same parameter
#: shapes, so that a cached checkpoint of the old network is not loaded into the new one (every
#: CNN checkpoint's key includes it). 2: the stem convolution has stride 2.
RESNET_VERSION = 2


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a skip connection (a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip = nn.Identity() if stride == 1 and in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class SmallResNet(nn.Module):
    """A small ResNet: ``backbone`` maps images to a feature vector, ``head`` maps it to classes.

    ``width`` is the channel count of the first stage; each later stage doubles it and halves the
    resolution. With ``width=16`` and 3 stages it has about 0.17M parameters.

    The stem halves the resolution, as ResNet's own stem does (there a 7x7 stride-2 convolution and
    a max-pool take 224 to 56): a 28x28 image becomes 14x14 with ``width`` channels, then 14, 7 and
    4 pixels in the three stages. Without it the first stage would run at the full 28x28, the most
    expensive part of the network; with it a training step is 2-3x faster on a CPU (one thread,
    bf16, batch 32-128: 2,300-2,700 vs 5,100-8,200 images/s) for the same parameters.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16, stages: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
        for stage in range(stages):
            out = width * 2**stage
            layers.append(BasicBlock(channels, out, stride=1 if stage == 0 else 2))
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.backbone = nn.Sequential(*layers)
        self.feature_dim = channels
        self.head = nn.Linear(channels, num_classes)
        # Convolution weights stored channels-last (NHWC): oneDNN's CPU convolutions and BatchNorm
        # run about 1.3x faster that way (measured on this network before its stem had stride 2;
        # 1 thread, bf16 autocast, batch 128: 2,100 vs 1,600 images/s), and every activation
        # follows the weights' layout. The values
        # are the same; only the order in memory differs (a checkpoint saves contiguous copies).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's representation (what a linear probe reads)."""
        return self.backbone(x)


def _fold_pairs(module: nn.Module) -> None:
    """Fold every BatchNorm2d that directly follows a Conv2d into that convolution, in place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if isinstance(module, BasicBlock):
        module.conv1 = fuse_conv_bn_eval(module.conv1, module.bn1)
        module.conv2 = fuse_conv_bn_eval(module.conv2, module.bn2)
        module.bn1, module.bn2 = nn.Identity(), nn.Identity()
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                module[i + 1] = nn.Identity()
    for child in module.children():
        _fold_pairs(child)


def for_inference(model: nn.Module) -> nn.Module:
    """A copy of a :class:`SmallResNet` for evaluation only, BatchNorm folded into the convolutions.

    In eval mode BatchNorm is a fixed per-channel scale and shift, so it can be merged into the
    convolution before it (weights scaled, a bias added): the same function, up to float rounding,
    with a third fewer passes over the activations -- on a CPU about 1.4x faster inference for this
    network (2,000 digits at one thread, bf16: 145 vs 205 ms). Any other model is returned
    unchanged (evaluate it as it is).
    """
    if not isinstance(model, SmallResNet):
        return model
    folded = copy.deepcopy(model).eval()
    _fold_pairs(folded)
    return folded.to(memory_format=torch.channels_last)


def tiny_gpt(vocab_size: int, n_positions: int = 128, n_embd: int = 64, n_layer: int = 2,
             n_head: int = 4, dropout: float = 0.0, eos_token_id: int = 0,
             attn_implementation: str = "sdpa", **config: Any) -> nn.Module:
    """A GPT-2 (``transformers.GPT2LMHeadModel``) built from a config: no hub, no download.

    ``eos_token_id`` must lie inside the (small) vocabulary; GPT-2's default 50256 does not.
    Any other ``GPT2Config`` field can be given as a keyword (e.g. ``use_cache=False``,
    ``activation_function="gelu_pytorch_tanh"``, ``pad_token_id=1``).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout,
                        attn_pdrop=dropout, bos_token_id=eos_token_id, eos_token_id=eos_token_id,
                        **config)
    return GPT2LMHeadModel(config, attn_implementation=attn_implementation) \
        if _accepts_attn_impl() else GPT2LMHeadModel(config)


def _accepts_attn_impl() -> bool:
    import inspect

    from transformers import GPT2LMHeadModel

    return "attn_implementation" in inspect.signature(GPT2LMHeadModel.__init__).parameters


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    seen: dict[int, int] = {}
    for param in model.parameters():
        if not trainable_only or param.requires_grad:
            seen[id(param)] = param.numel()
    return sum(seen.values())


def set_trainable(modules: nn.Module | Iterable[nn.Module], trainable: bool) -> None:
    """Freeze (``False``) or unfreeze (``True``) every parameter of ``modules``."""
    for module in [modules] if isinstance(modules, nn.Module) else modules:
        for param in module.parameters():
            param.requires_grad_(trainable)


def new_head(model: SmallResNet, num_classes: int, seed: int | None = None) -> SmallResNet:
    """Replace the classifier head (e.g. 40 glyph classes -> 10 digits); the backbone is kept."""
    if seed is not None:
        torch.manual_seed(seed)
    model.head = nn.Linear(model.feature_dim, num_classes).to(next(model.parameters()).device)
    return model
