"""Check the CUDA paths on a machine with a GPU: parity, bf16, fused attention, NCCL.

Prints one line per check and then ``all GPU checks passed``; exits with
status 1 when a check fails and 2 without a GPU. Expected to take a few
minutes on one GPU (an estimate: not yet timed). The CPU test suite
covers the same code, but not CUDA kernels, bf16 on the GPU or NCCL.

Checks:
    * eval logits of a ViT on CUDA (float32) against the CPU (max abs diff);
    * penalty terms on CUDA against the CPU, in float32 and under bf16 autocast;
    * the ``attn`` term computed in query chunks (long sequences, SDPA for the
      output) against the materialized one, on CUDA;
    * a two-step data-parallel run through ``torchrun`` with the NCCL backend,
      one process per visible GPU (at most 2).

Example:
    python scripts/gpu_check.py --out runs/gpu-check
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _model(chunk: int = 256) -> torch.nn.Module:
    import exdrop

    return exdrop.create_model(
        "vit_small_patch16_224", num_classes=10, depth=2, attn_chunk_size=chunk,
        dropout={"mode": "explicit", "rates": 0.1},
    )


def check_eval_parity() -> str:
    torch.manual_seed(0)
    model = _model().eval()
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    diff = (cpu - gpu).abs().max().item()
    # PyTorch leaves TF32 off for matmuls but on for cuDNN convolutions (the patch
    # embedding), so turn it off to compare true float32 results.
    torch.backends.cudnn.allow_tf32 = False
    assert diff < 1e-4, f"CUDA and CPU eval logits differ by {diff:.2e}"
    return f"eval logits CUDA vs CPU, float32: max abs diff {diff:.2e}"


def check_penalty(bf16: bool) -> str:
    torch.manual_seed(0)
    model = _model().train()
    x = torch.randn(4, 3, 224, 224)
    _, cpu = model(x, return_penalty=True)
    model = model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        _, gpu = model(x.cuda(), return_penalty=True)
    rel = abs(gpu.total.item() - cpu.total.item()) / cpu.total.item()
    limit = 2e-2 if bf16 else 1e-4
    assert rel < limit, f"penalty on CUDA ({'bf16' if bf16 else 'float32'}) differs by {rel:.2e} relative"
    gpu.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), "non-finite penalty gradients on CUDA"
    return f"penalty CUDA vs CPU, {'bf16 autocast' if bf16 else 'float32'}: relative diff {rel:.2e}"


def check_chunked_attn_term() -> str:
    torch.manual_seed(0)
    full = _model(chunk=10_000).cuda().train()
    chunked = _model(chunk=64).cuda().train()
    chunked.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 224, 224, device="cuda")  # 197 tokens, so chunk 64 takes the chunked path
    _, a = full(x, return_penalty=True)
    _, b = chunked(x, return_penalty=True)
    rel = abs(a.terms["attn"].item() - b.terms["attn"].item()) / a.terms["attn"].item()
    assert rel < 1e-4, f"chunked attn term differs by {rel:.2e} relative"
    return f"attn term chunked vs materialized on CUDA: relative diff {rel:.2e}"


def check_nccl(out: Path) -> str:
    procs = min(torch.cuda.device_count(), 2)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
        str(REPO / "scripts" / "finetune.py"), "--config", str(REPO / "configs" / "demo.yaml"), "--no-progress",
        "train.device=cuda", "train.bf16=true", "train.max_steps=2", "train.epochs=1",
        "train.plots=false", "train.tensorboard=false", f"output.dir={out}", "output.name=nccl",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"torchrun failed (exit {result.returncode}):\n{log[-3000:]}"
    assert (out / "nccl" / "model.safetensors").is_file(), f"no weights written under {out / 'nccl'}"
    return f"torchrun with NCCL on {procs} GPU(s): two bf16 steps, weights written"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check", help="folder for the torchrun output")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available: run this script on a machine with a GPU", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    os.environ.setdefault("OMP_NUM_THREADS", "4")
    checks = [
        check_eval_parity,
        lambda: check_penalty(False),
        lambda: check_penalty(True),
        check_chunked_attn_term,
        lambda: check_nccl(Path(args.out)),
    ]
    failed = 0
    for check in checks:
        try:
            print("ok  ", check())
        except AssertionError as err:
            failed += 1
            print("FAIL", err)
    print("all GPU checks passed" if not failed else f"{failed} GPU check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
