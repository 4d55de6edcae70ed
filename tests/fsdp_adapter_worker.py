"""Run by tests/test_fsdp_adapter.py under torch.distributed.run with 2 gloo processes: a tiny
Llama with CoRA's adapter on every projection, its decoder layers and root sharded with FSDP2's
fully_shard, against the same model whole in each process. Prints one line per check."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from cora.llm.lowrank import CollaborativeAdapter


def build(dtype: torch.dtype):
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().to(dtype)
    model.requires_grad_(False)
    adapter = CollaborativeAdapter(model, modules="qkvof", rank=4, alpha=8.0, dropout=0.0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for w in adapter.wrapped.values():
            w.lowrank_B.copy_(torch.randn(w.lowrank_B.shape, generator=g) * 0.3)
    return model, adapter


def step(model, adapter):
    g = torch.Generator().manual_seed(1)
    a = {w: torch.randn(3, w, 4, generator=g).requires_grad_() for w in adapter.input_widths}
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    with adapter.weights(a):
        logits = model(input_ids=ids).logits.float()
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    b_grads = {}
    for name, w in adapter.wrapped.items():
        grad = w.lowrank_B.grad
        b_grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    return logits.detach(), {w: t.grad for w, t in a.items()}, b_grads


def main() -> None:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1]]
    dist.init_process_group("gloo")
    whole = step(*build(dtype))
    model, adapter = build(dtype)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert adapter._sharded()
    sharded = step(model, adapter)
    rank = dist.get_rank()
    print(f"rank {rank} logits {(sharded[0] - whole[0]).abs().max().item():.3e}")
    print(f"rank {rank} a_grad {max((sharded[1][w] - whole[1][w]).abs().max().item() for w in whole[1]):.3e}")
    print(f"rank {rank} b_grad {max((sharded[2][n] - whole[2][n]).abs().max().item() for n in whole[2]):.3e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
