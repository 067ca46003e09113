"""DropoutConfig validation, its dict form, and how create_model reads dropout settings."""

from __future__ import annotations

import math
import re

import pytest
import timm
import torch

import exdrop
from exdrop import COMPONENTS, DropoutConfig
from exdrop.penalties import MODES

MODEL = "vit_tiny_patch16_224"
SMALL = dict(depth=1, img_size=32, num_classes=4)


# --- valid configs -----------------------------------------------------------------------------


def test_defaults_fill_every_component() -> None:
    config = DropoutConfig(rates={"ffn": 0.1}, coefficients={"q": 2.0})

    assert config.mode == "explicit"
    assert set(config.rates) == set(COMPONENTS) == set(config.coefficients)
    assert config.rates == {**{c: 0.0 for c in COMPONENTS}, "ffn": 0.1}
    assert config.coefficients == {**{c: 1.0 for c in COMPONENTS}, "q": 2.0}


def test_scalar_rate_applies_to_all() -> None:
    config = DropoutConfig(rates=0.2, coefficients=0.5)

    assert all(config.rate(c) == 0.2 for c in COMPONENTS)
    assert all(config.coefficients[c] == 0.5 for c in COMPONENTS)
    assert config.rho("attn") == pytest.approx(0.2 / 0.8)


def test_penalty_active_by_mode() -> None:
    rates = {"q": 0.1, "ffn": 0.2}
    explicit = DropoutConfig(mode="explicit", rates=rates, coefficients={"ffn": 0.0})
    implicit = DropoutConfig(mode="implicit", rates=rates)
    off = DropoutConfig(mode="off", rates=rates)

    assert [c for c in COMPONENTS if explicit.penalty_active(c)] == ["q"]
    assert explicit.any_penalty
    assert explicit.implicit_rate("q") == 0.0
    assert not implicit.any_penalty
    assert implicit.implicit_rate("ffn") == 0.2
    assert not off.any_penalty
    assert off.implicit_rate("ffn") == 0.0


def test_zero_rate_boundary_is_valid() -> None:
    config = DropoutConfig(rates=0.0, coefficients=0.0)

    assert config.rho("q") == 0.0
    assert not config.any_penalty


def test_coerce_accepts_each_form() -> None:
    config = DropoutConfig(mode="implicit", rates={"attn": 0.1})

    assert DropoutConfig.coerce(None).mode == "off"
    assert DropoutConfig.coerce("explicit").mode == "explicit"
    assert DropoutConfig.coerce(config) is config
    from_dict = DropoutConfig.coerce({"mode": "implicit", "rates": {"attn": 0.1}})
    assert from_dict == config
    assert DropoutConfig.coerce(config.to_dict()) == config


# --- errors: each one names the key and what is allowed ----------------------------------------

RANGE = r"\[0, 1\)"

INVALID_RATES = [
    ({"q": 1.0}, "'q'"),
    ({"k": -0.1}, "'k'"),
    ({"attn": 1.5}, "'attn'"),
    ({"ffn": math.nan}, "'ffn'"),
    ({"proj": math.inf}, "'proj'"),
    ({"ffn_out": -math.inf}, "'ffn_out'"),
]


@pytest.mark.parametrize("rates, key", INVALID_RATES)
def test_rate_out_of_range_rejected(rates: dict, key: str) -> None:
    with pytest.raises(ValueError, match=RANGE) as info:
        DropoutConfig(rates=rates)
    assert key in str(info.value)
    assert "rate" in str(info.value)


def test_scalar_rate_out_of_range_rejected() -> None:
    with pytest.raises(ValueError, match=RANGE):
        DropoutConfig(rates=1.0)


INVALID_COEFFICIENTS = [
    ({"q": -1.0}, "'q'"),
    ({"v": math.nan}, "'v'"),
    ({"ffn": math.inf}, "'ffn'"),
    ({"attn": -1e-9}, "'attn'"),
]


@pytest.mark.parametrize("coefficients, key", INVALID_COEFFICIENTS)
def test_coefficient_invalid_rejected(coefficients: dict, key: str) -> None:
    with pytest.raises(ValueError, match=">= 0") as info:
        DropoutConfig(rates=0.1, coefficients=coefficients)
    assert key in str(info.value)
    assert "coefficient" in str(info.value)


@pytest.mark.parametrize("field", ["rates", "coefficients"])
def test_unknown_component_rejected(field: str) -> None:
    with pytest.raises(ValueError) as info:
        DropoutConfig(**{field: {"mlp": 0.1}})
    message = str(info.value)
    assert "'mlp'" in message
    assert field in message
    for component in COMPONENTS:
        assert component in message


@pytest.mark.parametrize("mode", ["Explicit", "mc", "", None, 1])
def test_unknown_mode_rejected(mode) -> None:
    with pytest.raises(ValueError, match="mode") as info:
        DropoutConfig(mode=mode)
    for allowed in MODES:
        assert allowed in str(info.value)


BAD_TYPES = [
    ("rates", "0.1", "rates", RANGE),
    ("rates", [0.1], "rates", RANGE),
    ("rates", {"q": "0.1"}, r"rates\['q'\]", RANGE),
    ("rates", {"k": True}, r"rates\['k'\]", RANGE),
    ("rates", {"v": None}, r"rates\['v'\]", RANGE),
    ("coefficients", "1", "coefficients", ">= 0"),
    ("coefficients", {"ffn": "2"}, r"coefficients\['ffn'\]", ">= 0"),
    ("coefficients", {"attn": torch.tensor(1.0)}, r"coefficients\['attn'\]", ">= 0"),
]


@pytest.mark.parametrize("field, value, key, allowed", BAD_TYPES)
def test_bad_type_rejected(field: str, value, key: str, allowed: str) -> None:
    with pytest.raises(ValueError, match=key) as info:
        DropoutConfig(**{field: value})
    assert re.search(allowed, str(info.value)), str(info.value)


@pytest.mark.parametrize("value", [3, 0.5, ["explicit"], object()])
def test_coerce_bad_type_rejected(value) -> None:
    with pytest.raises(ValueError, match="DropoutConfig, a dict, a mode string or None"):
        DropoutConfig.coerce(value)


def test_coerce_unknown_dict_key_rejected() -> None:
    with pytest.raises(ValueError, match="'rate'") as info:
        DropoutConfig.coerce({"mode": "explicit", "rate": {"q": 0.1}})
    assert "mode, rates, coefficients" in str(info.value)


def test_coerce_dict_values_validated() -> None:
    with pytest.raises(ValueError, match=RANGE):
        DropoutConfig.coerce({"rates": {"ffn": 1.2}})


def test_config_is_frozen() -> None:
    config = DropoutConfig(rates=0.1)

    with pytest.raises(AttributeError):
        config.mode = "off"


# --- create_model ---------------------------------------------------------------------------


def test_create_model_dict_dropout() -> None:
    model = exdrop.create_model(
        MODEL, dropout={"mode": "explicit", "rates": {"ffn": 0.2}, "coefficients": {"ffn": 3.0}}, **SMALL
    )

    assert model.dropout_config == DropoutConfig(rates={"ffn": 0.2}, coefficients={"ffn": 3.0})
    # Every block reads the model's config object, so set_dropout reaches all of them.
    assert all(block.mlp.dropout_config is model.dropout_config for block in model.blocks)

    model.train()
    _, penalty = model(torch.randn(2, 3, 32, 32), return_penalty=True)
    assert set(penalty.terms) == {"ffn"}


def test_create_model_default_is_off() -> None:
    model = exdrop.create_model(MODEL, **SMALL)

    assert model.dropout_config.mode == "off"


def test_create_model_invalid_dropout_rejected() -> None:
    with pytest.raises(ValueError, match=RANGE):
        exdrop.create_model(MODEL, dropout={"rates": {"q": 1.0}}, **SMALL)
    with pytest.raises(ValueError, match="unknown dropout mode"):
        exdrop.create_model(MODEL, dropout="sometimes", **SMALL)


def test_timm_rates_map_to_implicit() -> None:
    model = exdrop.create_model(MODEL, attn_drop_rate=0.1, proj_drop_rate=0.2, **SMALL)

    config = model.dropout_config
    assert config.mode == "implicit"
    assert config.rates == {"q": 0.0, "k": 0.0, "v": 0.0, "attn": 0.1, "proj": 0.2, "ffn": 0.2, "ffn_out": 0.2}


def test_timm_rates_train_like_timm() -> None:
    # The masks are drawn in timm's order, so one seed gives timm's training forward.
    kwargs = dict(depth=2, img_size=32, num_classes=4, attn_drop_rate=0.2, proj_drop_rate=0.3)
    torch.manual_seed(0)
    reference = timm.create_model(MODEL, **kwargs).train()
    model = exdrop.create_model(MODEL, **kwargs).train()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)

    torch.manual_seed(5)
    expected = reference(x)
    torch.manual_seed(5)
    got = model(x)
    torch.manual_seed(6)
    other_seed = model(x)

    torch.testing.assert_close(got, expected, rtol=0.0, atol=1e-6)
    assert not torch.allclose(other_seed, expected)


def test_zero_timm_rates_keep_dropout() -> None:
    model = exdrop.create_model(MODEL, dropout="explicit", attn_drop_rate=0.0, proj_drop_rate=None, **SMALL)

    assert model.dropout_config.mode == "explicit"


def test_timm_rates_conflict_with_dropout() -> None:
    with pytest.raises(ValueError, match="both dropout= and timm's proj_drop_rate"):
        exdrop.create_model(MODEL, dropout={"mode": "explicit", "rates": 0.1}, proj_drop_rate=0.1, **SMALL)


@pytest.mark.parametrize("key, value", [("attn_drop_rate", 1.0), ("proj_drop_rate", -0.1), ("proj_drop_rate", math.nan)])
def test_timm_rate_out_of_range_rejected(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=RANGE) as info:
        exdrop.create_model(MODEL, **{key: value}, **SMALL)
    assert key in str(info.value)
