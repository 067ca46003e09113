"""Explicit-dropout terms against Monte Carlo masks, and how blocks and models return them.

The Monte Carlo check runs one block in implicit mode with many independent
masks. The input batch is repeated, so each copy draws its own mask. It
measures the mean squared change of the tensor at the first linear map after
the dropout point, reduced as the explicit terms are: sum over features and
heads per token, then mean over batch and tokens.
"""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from exdrop import VisionTransformer
from exdrop.models.layers import Attention, Block, set_dropout
from exdrop.penalties import (
    COMPONENTS,
    DropoutConfig,
    PenaltyResult,
    attn_probs_term,
    attn_probs_term_chunked,
    linear_input_term,
    output_term,
)

DIM, HEADS, TOKENS, BATCH = 32, 4, 12, 2
RATE = 0.3  # rho = 0.3 / 0.7 = 0.4286, far from p itself
COPIES = 2048  # masks per Monte Carlo estimate


def make_block(seed: int = 0) -> Block:
    """Build a float64 block whose weights make wrong slices and reductions visible.

    The q, k and v row blocks of ``qkv.weight`` get scales 1, 2 and 0.5, so a
    term read from the wrong row block is off by a factor of 4 or more. Norm
    gains and ``fc2`` columns are spread out so that the per-feature weighting
    ``h_i^2 ||W[:, i]||^2`` matters.
    """
    torch.manual_seed(seed)
    block = Block(DIM, HEADS, mlp_ratio=2.0, qkv_bias=True).double()
    with torch.no_grad():
        block.attn.qkv.weight[DIM:2 * DIM] *= 2.0
        block.attn.qkv.weight[2 * DIM:] *= 0.5
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.normal_(0.0, 0.1)
        block.mlp.fc2.weight *= torch.empty(block.mlp.fc2.in_features, dtype=torch.float64).uniform_(0.2, 3.0)
    return block.train()


def make_input(seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(BATCH, TOKENS, DIM, dtype=dtype)


def tokens_of_heads(t: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, D)`` -> ``(B, N, H * D)``."""
    return t.transpose(1, 2).flatten(2)


def run_and_capture(block: Block, x: torch.Tensor, component: str) -> torch.Tensor:
    """Run ``block(x)`` and return ``(B, N, features)`` at the first linear map after ``component``.

    The tensors are, per component:

    - q, k, v: the projection outputs, read at the attention kernel's inputs.
    - attn: ``o = A v``, the input of ``proj``.
    - proj: ``ya`` after its dropout.
    - ffn: the ``fc2`` output.
    - ffn_out: ``yf`` after its dropout.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    patches = contextlib.ExitStack()
    if component in ("q", "k", "v"):
        original = F.scaled_dot_product_attention

        def recording_sdpa(q, k, v, *args, **kwargs):
            captured.update(q=q, k=k, v=v)
            return original(q, k, v, *args, **kwargs)

        patches.enter_context(mock.patch.object(F, "scaled_dot_product_attention", recording_sdpa))
    elif component == "attn":
        handles.append(block.attn.proj.register_forward_pre_hook(
            lambda module, args: captured.update(attn=args[0])))
    elif component == "proj":
        handles.append(block.attn.register_forward_hook(
            lambda module, args, out: captured.update(proj=out[0])))
    elif component == "ffn":
        handles.append(block.mlp.fc2.register_forward_hook(
            lambda module, args, out: captured.update(ffn=out)))
    elif component == "ffn_out":
        handles.append(block.mlp.register_forward_hook(
            lambda module, args, out: captured.update(ffn_out=out[0])))

    try:
        with patches, torch.no_grad():
            block(x)
    finally:
        for handle in handles:
            handle.remove()

    out = captured[component]
    return tokens_of_heads(out) if component in ("q", "k", "v") else out


def monte_carlo_term(block: Block, x: torch.Tensor, component: str, seed: int = 123) -> tuple[float, float]:
    """Return the Monte Carlo mean squared change and its standard error over ``COPIES`` masks."""
    set_dropout(block, DropoutConfig(mode="off"))
    clean = run_and_capture(block, x, component)  # (B, N, F)

    set_dropout(block, DropoutConfig(mode="implicit", rates={component: RATE}))
    torch.manual_seed(seed)
    noisy = run_and_capture(block, x.repeat(COPIES, 1, 1), component)  # (COPIES * B, N, F)

    delta = noisy.view(COPIES, *clean.shape) - clean
    per_copy = delta.square().sum(dim=-1).mean(dim=(1, 2))  # (COPIES,)
    return float(per_copy.mean()), float(per_copy.std() / math.sqrt(COPIES))


def explicit_terms(block: Block, x: torch.Tensor, rates: dict[str, float], **config) -> dict[str, torch.Tensor]:
    set_dropout(block, DropoutConfig(mode="explicit", rates=rates, **config))
    _, terms = block(x)
    return terms


@pytest.mark.parametrize("component", COMPONENTS)
def test_term_matches_monte_carlo(component: str) -> None:
    block, x = make_block(), make_input()

    terms = explicit_terms(block, x, {component: RATE})
    assert set(terms) == {component}
    term = terms[component].item()
    mc_mean, mc_stderr = monte_carlo_term(block, x, component)

    assert term > 0.0
    # The estimate must be precise enough for a 2% tolerance to mean something.
    assert mc_stderr < 0.005 * term, f"Monte Carlo standard error {mc_stderr:.3g} too large for term {term:.4g}"
    assert abs(mc_mean - term) < 0.02 * term, f"{component}: explicit {term:.5g}, Monte Carlo {mc_mean:.5g}"
    # Scaling by p instead of p / (1 - p) would be 30% off, far outside the tolerance.
    wrong_scaling = term * (1.0 - RATE)
    assert abs(mc_mean - wrong_scaling) > 0.1 * term


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_qkv_terms_read_own_row_block(component: str) -> None:
    # The q, k and v row blocks have squared scales 1, 4 and 0.25.
    block, x = make_block(), make_input()
    terms = explicit_terms(block, x, {"q": RATE, "k": RATE, "v": RATE})
    h = block.norm1(x)
    rho = RATE / (1.0 - RATE)
    index = "qkv".index(component)
    weight = block.attn.qkv.weight[index * DIM:(index + 1) * DIM]
    expected = rho * (h.square() @ weight.square().sum(dim=0)).mean()

    torch.testing.assert_close(terms[component], expected.float(), rtol=1e-6, atol=0.0)
    assert terms["k"].item() > 2.0 * terms["q"].item() > 4.0 * terms["v"].item()


def test_zero_rate_gives_zero_penalty() -> None:
    block, x = make_block(), make_input()

    terms = explicit_terms(block, x, {c: 0.0 for c in COMPONENTS})
    result = PenaltyResult.from_blocks([terms], DropoutConfig().coefficients)

    assert terms == {}
    assert float(result.total) == 0.0
    assert result.terms == {}


def test_zero_rate_implicit_equals_off() -> None:
    block, x = make_block(), make_input()

    set_dropout(block, DropoutConfig(mode="off"))
    reference, _ = block(x)
    set_dropout(block, DropoutConfig(mode="implicit", rates=0.0))
    out, terms = block(x)

    assert terms == {}
    torch.testing.assert_close(out, reference, rtol=0.0, atol=0.0)


def test_zero_coefficient_skips_term() -> None:
    block, x = make_block(), make_input()

    terms = explicit_terms(block, x, {c: RATE for c in COMPONENTS}, coefficients={"ffn": 0.0, "q": 0.0})

    assert set(terms) == set(COMPONENTS) - {"ffn", "q"}


# For each component's term alone: the parameters that must get a non-zero gradient, and
# those that must get none. "q", "k" and "v" are the row blocks of qkv.weight.
GRADIENT_REACH = {
    "q": ({"q"}, {"k", "v", "proj", "fc1", "fc2"}),
    "k": ({"k"}, {"q", "v", "proj", "fc1", "fc2"}),
    "v": ({"v"}, {"q", "k", "proj", "fc1", "fc2"}),
    "attn": ({"q", "k", "v"}, {"proj", "fc1", "fc2"}),
    "proj": ({"q", "k", "v", "proj"}, {"fc1", "fc2"}),
    "ffn": ({"q", "k", "v", "proj", "fc1", "fc2"}, set()),
    "ffn_out": ({"q", "k", "v", "proj", "fc1", "fc2"}, set()),
}


@pytest.mark.parametrize("component", COMPONENTS)
def test_term_gradients_reach_weights_and_input(component: str) -> None:
    block, x = make_block(), make_input()
    x.requires_grad_(True)

    terms = explicit_terms(block, x, {component: RATE})
    terms[component].backward()

    qkv_grad = block.attn.qkv.weight.grad.view(3, DIM, DIM)
    grads = {
        "q": qkv_grad[0], "k": qkv_grad[1], "v": qkv_grad[2],
        "proj": block.attn.proj.weight.grad, "fc1": block.mlp.fc1.weight.grad, "fc2": block.mlp.fc2.weight.grad,
    }
    reached, untouched = GRADIENT_REACH[component]
    assert x.grad is not None
    assert x.grad.abs().sum() > 0
    for name in reached:
        assert grads[name] is not None, f"{component} term: no gradient in {name}"
        assert grads[name].abs().sum() > 0, f"{component} term: zero gradient in {name}"
    for name in untouched:
        assert grads[name] is None or grads[name].abs().sum() == 0, f"{component} term: gradient leaked into {name}"


# --- the attn term without materialized probabilities -------------------------------------


@pytest.mark.parametrize("score_scale", [1.0, 8.0])
def test_chunked_attn_term_matches_materialized(score_scale: float) -> None:
    torch.manual_seed(0)
    q = (torch.randn(2, 3, 13, 8) * score_scale).requires_grad_(True)
    k = torch.randn(2, 3, 13, 8).requires_grad_(True)
    v = torch.randn(2, 3, 13, 8).requires_grad_(True)
    scale, rho = 8 ** -0.5, 0.25

    attn = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)
    dense = attn_probs_term(attn, v, rho)
    dense_grads = torch.autograd.grad(dense, (q, k, v))
    chunked = attn_probs_term_chunked(q, k, v, scale, rho, chunk_size=5)
    chunked_grads = torch.autograd.grad(chunked, (q, k, v))

    torch.testing.assert_close(chunked, dense, rtol=1e-6, atol=1e-7)
    # The terms are computed in float32; large scores cost a few ulps in the gradients.
    for name, got, expected in zip("qkv", chunked_grads, dense_grads):
        atol = 2e-5 * float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=atol, msg=f"gradient of {name}")


def test_attention_chunked_path_matches_materialized() -> None:
    config = DropoutConfig(mode="explicit", rates={"attn": RATE})
    torch.manual_seed(0)
    dense = Attention(DIM, HEADS, qkv_bias=True, dropout=config, attn_chunk_size=256).train()
    chunked = Attention(DIM, HEADS, qkv_bias=True, dropout=config, attn_chunk_size=5).train()
    chunked.load_state_dict(dense.state_dict())
    h = make_input(dtype=torch.float32)

    out_dense, terms_dense = dense(h)
    (out_dense.square().mean() + terms_dense["attn"]).backward()
    out_chunked, terms_chunked = chunked(h)
    (out_chunked.square().mean() + terms_chunked["attn"]).backward()

    torch.testing.assert_close(out_chunked, out_dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms_chunked["attn"], terms_dense["attn"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(chunked.qkv.weight.grad, dense.qkv.weight.grad, rtol=1e-5, atol=1e-6)


# --- dtype, autocast, tensor functions -------------------------------------------------------


def test_terms_float32_under_bf16_autocast() -> None:
    block = make_block().float()
    x = make_input(dtype=torch.float32).requires_grad_(True)
    set_dropout(block, DropoutConfig(mode="explicit", rates=0.2))
    _, reference = block(x)

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out, terms = block(x)
    loss = out.float().square().mean() + sum(terms.values())
    loss.backward()

    assert set(terms) == set(COMPONENTS)
    for name, value in terms.items():
        assert value.dtype == torch.float32, f"{name} term is {value.dtype}"
        # bf16 activations carry about 3 significant digits.
        assert abs(value.item() - reference[name].item()) < 0.05 * reference[name].item(), name
    for param in (block.attn.qkv.weight, block.attn.proj.weight, block.mlp.fc1.weight, block.mlp.fc2.weight):
        assert param.grad is not None
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0
    assert x.grad is not None
    assert x.grad.abs().sum() > 0


def test_term_functions_upcast_low_precision() -> None:
    torch.manual_seed(0)
    u = torch.randn(4, 6, 16)
    weight = torch.randn(8, 16)

    for low in (torch.bfloat16, torch.float16):
        term = linear_input_term(u.to(low), weight.to(low), 0.5)
        assert term.dtype == torch.float32
        torch.testing.assert_close(term, linear_input_term(u, weight, 0.5), rtol=2e-2, atol=0.0)
        assert output_term(u.to(low), 0.5).dtype == torch.float32


def test_term_functions_reduce_as_specified() -> None:
    torch.manual_seed(0)
    u = torch.randn(3, 5, 4)
    weight = torch.randn(7, 4)
    rho = 0.25

    per_token = torch.einsum("bni,oi->bn", u.square(), weight.square())
    torch.testing.assert_close(linear_input_term(u, weight, rho), rho * per_token.mean())
    torch.testing.assert_close(output_term(u, rho), rho * u.square().sum(-1).mean())


# --- model level: PenaltyResult, eval mode, forward contract -------------------------------


def tiny_vit(dropout=None, seed: int = 0, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    args.update(kwargs)
    return VisionTransformer(dropout=dropout, **args)


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, 3, 32, 32)


COEFFICIENTS = {"q": 0.5, "k": 1.5, "v": 2.0, "attn": 3.0, "proj": 0.25, "ffn": 4.0, "ffn_out": 0.75}


def test_penalty_total_is_weighted_sum() -> None:
    model = tiny_vit(dict(mode="explicit", rates=0.2, coefficients=COEFFICIENTS)).train()

    _, penalty = model(images(), return_penalty=True)

    assert set(penalty.terms) == set(COMPONENTS)
    assert len(penalty.raw_per_block) == len(penalty.per_block) == 2
    expected_total = torch.zeros(())
    for name in COMPONENTS:
        raw_sum = sum(block[name] for block in penalty.raw_per_block)
        torch.testing.assert_close(penalty.terms[name], COEFFICIENTS[name] * raw_sum)
        expected_total = expected_total + COEFFICIENTS[name] * raw_sum
    torch.testing.assert_close(penalty.total, expected_total)
    assert penalty.total.dtype == torch.float32

    unit = penalty.reweighted({c: 1.0 for c in COMPONENTS})
    torch.testing.assert_close(unit.total, sum(sum(b.values()) for b in penalty.raw_per_block))


def test_prefixed_term_uses_component_coefficient() -> None:
    raw = [{"temporal.q": torch.tensor(2.0), "q": torch.tensor(1.0)}, {"temporal.q": torch.tensor(3.0)}]

    result = PenaltyResult.from_blocks(raw, {**{c: 1.0 for c in COMPONENTS}, "q": 10.0})

    torch.testing.assert_close(result.terms["temporal.q"], torch.tensor(50.0))
    torch.testing.assert_close(result.total, torch.tensor(60.0))
    assert result.per_block_floats() == [{"temporal.q": 20.0, "q": 10.0}, {"temporal.q": 30.0}]


def test_penalty_independent_of_batch_size() -> None:
    model = tiny_vit(dict(mode="explicit", rates=0.2, coefficients=COEFFICIENTS)).train()
    x = images()

    _, single = model(x, return_penalty=True)
    _, doubled = model(torch.cat([x, x]), return_penalty=True)

    torch.testing.assert_close(doubled.total, single.total, rtol=1e-5, atol=0.0)
    for name in COMPONENTS:
        torch.testing.assert_close(doubled.terms[name], single.terms[name], rtol=1e-5, atol=0.0)


def test_eval_mode_has_no_terms_and_plain_outputs() -> None:
    explicit = tiny_vit(dict(mode="explicit", rates=0.3)).eval()
    plain = tiny_vit("off").eval()
    x = images()

    logits, penalty = explicit(x, return_penalty=True)

    assert penalty.terms == {}
    assert all(block == {} for block in penalty.per_block)
    assert float(penalty.total) == 0.0
    torch.testing.assert_close(logits, plain(x), rtol=0.0, atol=0.0)


def test_forward_returns_logits_or_pair() -> None:
    model = tiny_vit(dict(mode="explicit", rates=0.1)).train()
    x = images()

    logits = model(x)
    pair = model(x, return_penalty=True)

    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (3, 5)
    assert isinstance(pair, tuple)
    assert len(pair) == 2
    assert isinstance(pair[1], PenaltyResult)
    torch.testing.assert_close(pair[0], logits, rtol=0.0, atol=0.0)
    assert pair[1].total.item() > 0.0


def test_explicit_mode_deterministic_in_train() -> None:
    model = tiny_vit(dict(mode="explicit", rates=0.3)).train()
    x = images()

    first, penalty_first = model(x, return_penalty=True)
    second, penalty_second = model(x, return_penalty=True)

    torch.testing.assert_close(first, second, rtol=0.0, atol=0.0)
    torch.testing.assert_close(penalty_first.total, penalty_second.total, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("component", COMPONENTS)
def test_implicit_mode_stochastic_only_in_train(component: str) -> None:
    model = tiny_vit(dict(mode="implicit", rates={component: 0.3}))
    x = images()

    model.train()
    first, penalty = model(x, return_penalty=True)
    second = model(x)
    assert not torch.allclose(first, second), f"implicit {component} mask did not change the output"
    assert penalty.terms == {}
    assert penalty.total.item() == 0.0

    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0.0, atol=0.0)
    torch.testing.assert_close(model(x), tiny_vit("off").eval()(x), rtol=0.0, atol=0.0)


def test_set_dropout_switches_mode_in_place() -> None:
    model = tiny_vit("off").train()
    x = images()
    _, before = model(x, return_penalty=True)

    model.set_dropout({"mode": "explicit", "rates": {"ffn": 0.2}})
    _, after = model(x, return_penalty=True)

    assert before.terms == {}
    assert set(after.terms) == {"ffn"}
    assert all(block.attn.dropout_config is model.dropout_config for block in model.blocks)
