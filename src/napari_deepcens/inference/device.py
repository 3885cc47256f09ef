"""Choosing where the network runs: the GPU when there is one, the CPU otherwise."""

from __future__ import annotations

import re

import torch

from ..errors import DeepCeNSError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → first CUDA GPU if available, else CPU; ``cuda`` without a GPU is an error."""
    name = str(device or "auto").strip().lower()  # a torch.device is checked alike
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not re.fullmatch(r"cuda(:(0|[1-9]\d*))?", name):
            raise DeepCeNSError(f"unknown device {device!r}: 'cuda', or 'cuda:N' for the N-th GPU")
        if not torch.cuda.is_available():
            raise DeepCeNSError(
                "device 'cuda' was asked for but no CUDA GPU is available to torch here; "
                "use device 'auto' or 'cpu'"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeepCeNSError(f"device {name!r}: this machine has {torch.cuda.device_count()} "
                                f"GPU(s), numbered from 0")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DeepCeNSError(f"unknown device {device!r}: choose one of {', '.join(DEVICE_CHOICES)}")
