"""int8 dynamic quantisation of a frozen backbone's decoder linears, for CPU inference.

``torch.ao``'s dynamic quantisation stores each weight in int8 (per output channel) and quantises
activations per batch on the fly; the matmuls run in int8 with int32 accumulation (fbgemm / oneDNN
kernels, VNNI where the CPU has it). Only the decoder's linear layers are quantised: the Yes row
of the LM head is read directly in fp32 (:func:`cora.llm.scoring.yes_logits`; it is often tied to
the input embeddings), and CoRA's B and generator stay fp32. A wrapped module's low-rank update
is then added after its quantised frozen product (:class:`cora.llm.lowrank.CollaborativeLinear`).
Scores move: ``benchmarks/recommend_latency.py`` measures how far from fp32.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_int8(model: nn.Module) -> int:
    """Quantise ``model.get_decoder()``'s ``nn.Linear`` modules in place; returns how many."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    decoder = model.get_decoder()
    names = [n for n, m in decoder.named_modules() if type(m) is nn.Linear]
    qconfig = per_channel_dynamic_qconfig if torch.backends.quantized.engine in ("fbgemm", "x86") else default_dynamic_qconfig
    with warnings.catch_warnings():  # torch marks the quantised tensor API deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(decoder, {n: qconfig for n in names}, dtype=torch.qint8, inplace=True)
    return len(names)
