#!/usr/bin/env python
"""Training-step time and memory of one model in off, implicit and explicit mode.

The three modes are measured in one process, interleaved step by step so that
machine load affects them alike, and printed as ratios to ``off``.

Memory on CUDA is the peak allocated memory of a step. PyTorch keeps no
allocator statistics on the CPU, so there the script counts the bytes of
tensors saved for the backward pass, once per storage. That is the activation
memory that the dropout modes change.

Example:
    python scripts/benchmark.py --model vit_small_patch16_224 --batch-size 32 --img-size 224
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import exdrop  # noqa: E402

MODES = ("off", "implicit", "explicit")


def saved_tensor_bytes(step) -> int:
    """Run ``step()`` and return the bytes of distinct storages autograd saved for backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224", help="registered model name")
    parser.add_argument("--img-size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--depth", type=int, default=None, help="override the number of blocks")
    parser.add_argument("--rate", type=float, default=0.1, help="dropout rate of all seven components")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    extra = {"depth": args.depth} if args.depth else {}
    torch.manual_seed(0)
    models = {}
    for mode in MODES:
        models[mode] = exdrop.create_model(
            args.model, img_size=args.img_size, num_classes=100,
            dropout={"mode": mode, "rates": args.rate}, **extra,
        ).to(device).train()
        if mode != "off":
            models[mode].load_state_dict(models["off"].state_dict())
    optimizers = {mode: torch.optim.AdamW(m.parameters(), lr=1e-4) for mode, m in models.items()}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 100, (args.batch_size,), device=device)

    def step(mode: str) -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits, penalty = models[mode](x, return_penalty=True)
        loss = F.cross_entropy(logits.float(), y) + penalty.total
        optimizers[mode].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[mode].step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        for mode in MODES:
            step(mode)
    times = {mode: [] for mode in MODES}
    for _ in range(args.steps):
        for mode in MODES:
            sync()
            start = time.perf_counter()
            step(mode)
            sync()
            times[mode].append(time.perf_counter() - start)

    memory = {}
    for mode in MODES:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            step(mode)
            sync()
            memory[mode] = torch.cuda.max_memory_allocated(device)
        else:
            memory[mode] = saved_tensor_bytes(lambda: step(mode))

    what = "peak allocated" if device.type == "cuda" else "saved for backward"
    print(f"model {args.model}, img {args.img_size}, batch {args.batch_size}, device {device}, "
          f"bf16 {args.bf16}, rate {args.rate}, {args.steps} steps per mode (median)")
    print(f"{'mode':<10}{'step ms':>10}{'time/off':>10}{'memory MiB':>12}{'mem/off':>9}   ({what})")
    base_t = statistics.median(times["off"])
    for mode in MODES:
        t = statistics.median(times[mode])
        print(f"{mode:<10}{t * 1e3:>10.1f}{t / base_t:>10.2f}{memory[mode] / 2**20:>12.1f}"
              f"{memory[mode] / memory['off']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
