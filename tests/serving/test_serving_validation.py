"""One-line request validation helpers."""

from __future__ import annotations

import math

import pytest

from serving.validation import ValidationError, require, require_max_items, require_non_empty, require_range


def test_validation_error_names_the_field():
    err = ValidationError("context.user_id", "must not be empty")
    assert err.field == "context.user_id" and err.message == "must not be empty"
    assert "context.user_id" in str(err) and "must not be empty" in str(err)
    assert isinstance(err, ValueError)


def test_require():
    require(True, "f", "msg")
    with pytest.raises(ValidationError, match="k must be positive") as info:
        require(False, "top_k", "k must be positive")
    assert info.value.field == "top_k"


@pytest.mark.parametrize("value", [None, "", "   ", [], (), {}])
def test_require_non_empty_rejects(value):
    with pytest.raises(ValidationError) as info:
        require_non_empty(value, "user_id")
    assert info.value.field == "user_id"


@pytest.mark.parametrize("value", ["u1", [1], 0, 0.0])
def test_require_non_empty_accepts_and_returns(value):
    assert require_non_empty(value, "x") is value


def test_require_range():
    assert require_range(5, "top_k", 1, 100) == 5
    assert require_range(1, "top_k", 1, 100) == 1 and require_range(100, "top_k", 1, 100) == 100
    assert require_range(-3.0, "score", hi=0.0) == -3.0
    with pytest.raises(ValidationError, match=">= 1"):
        require_range(0, "top_k", 1, 100)
    with pytest.raises(ValidationError, match="<= 100"):
        require_range(101, "top_k", 1, 100)
    with pytest.raises(ValidationError, match="NaN"):
        require_range(math.nan, "score", 0.0, 1.0)


def test_require_max_items():
    items = list(range(3))
    assert require_max_items(items, "candidates", 3) is items
    with pytest.raises(ValidationError, match="4 items, at most 3") as info:
        require_max_items(items + [3], "candidates", 3)
    assert info.value.field == "candidates"
