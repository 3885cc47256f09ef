"""Choosing where the network runs: the GPU when there is one, the CPU otherwise."""

from __future__ import annotations

import torch

from ..errors import DeepCeNSError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → first CUDA GPU if available, else CPU; ``cuda`` without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeepCeNSError(
                "device 'cuda' was asked for but no CUDA GPU is available to torch here; "
                "use device 'auto' or 'cpu'"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DeepCeNSError(f"unknown device {device!r}: choose one of {', '.join(DEVICE_CHOICES)}")
