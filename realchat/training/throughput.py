"""How fast a training step ran: tokens per second, and on CUDA the model FLOPs utilisation (MFU).

Tokens per second are the non-padding tokens the trainer consumed in this run (transformers'
``num_input_tokens_seen``, counted over every rank: every token of a padding-free packed row, the
attention mask's tokens of a padded batch) divided by the wall-clock seconds of
``trainer.train()`` in this run (a resumed run counts only what it trained itself).

MFU is the share of the accelerators' peak dense bf16 throughput that the model's own arithmetic
used (PaLM, Chowdhery et al. 2022, appendix B)::

    flops per token = 6 N + 12 L H T
    MFU             = tokens/s x flops per token / (peak FLOP/s per device x devices)

``N``: the model's parameters (tied embeddings once: the output projection costs the same
multiply-adds); ``6 N``: forward (2 N) and backward (4 N) of every weight; ``12 L H T``: the
attention scores and their weighted sum over ``T`` attended tokens in each of ``L`` layers of width
``H``, forward and backward. ``T`` is the mean length of a trained sequence (one conversation: packed
conversations attend only to themselves), the causal half not discounted, as in PaLM. Gradient
checkpointing's recomputation is not counted (that is "hardware" FLOPs, not model FLOPs). The peak is
the datasheet's dense bf16 tensor-core figure of the device, looked up by its name; on a device not in
the table, on CPUs, or for a run that was not bf16, the MFU is not reported (None) rather than guessed.
"""

from __future__ import annotations

from typing import Any

#: Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of ``torch.cuda.get_device_name``;
#: NVIDIA datasheets. The first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A6000", 155.0),
)


def peak_bf16_tflops(device_name: str | None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s, or None when it is not in the table."""
    if not device_name:
        return None
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: float) -> float:
    """Model FLOPs to train on one token: ``6 N + 12 L H T`` (forward and backward)."""
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def mfu(tokens_per_s: float, flops_token: float, peak_tflops: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None without a known peak)."""
    if not peak_tflops or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_token / (peak_tflops * 1e12 * max(devices, 1))


def throughput(tokens: int, seconds: float, *, n_params: int, n_layers: int, hidden: int, seq_len: float,
               device_type: str, device_name: str | None, bf16: bool, devices: int = 1) -> dict[str, Any]:
    """The figures a training step records: tokens/s, and on CUDA in bf16 the MFU."""
    tps = tokens / seconds if seconds > 0 else 0.0
    fpt = flops_per_token(n_params, n_layers, hidden, seq_len)
    peak = peak_bf16_tflops(device_name) if device_type == "cuda" and bf16 else None
    share = mfu(tps, fpt, peak, devices)
    return {
        "tokens": int(tokens),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tps, 1),
        "device": device_name or device_type,
        "devices": devices,
        "flops_per_token": int(fpt),
        "peak_tflops_per_device": peak,
        "mfu": round(share, 4) if share is not None else None,
    }
