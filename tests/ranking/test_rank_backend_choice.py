"""Which backend a replica serves an artifact on (ranking.backends.serving_backend, used by ranking.live.default_loader)."""

from __future__ import annotations

from ranking.backends import serving_backend

FULL = ["eager", "onnxruntime", "onnxruntime-int8", "aotinductor", "tensorrt"]


def test_onnxruntime_serves_the_int8_copy_when_the_artifact_has_one() -> None:
    assert serving_backend("onnxruntime", FULL) == "onnxruntime-int8"
    assert serving_backend("onnxruntime", FULL, int8=False) == "onnxruntime"
    assert serving_backend("onnxruntime", ["eager", "onnxruntime", "tensorrt"]) == "onnxruntime"  # no INT8 copy


def test_other_backends_are_served_as_configured() -> None:
    for name in ("eager", "aotinductor", "tensorrt", "onnxruntime-int8"):
        assert serving_backend(name, FULL) == name


def test_a_missing_backend_falls_back_to_the_artifacts_first() -> None:
    assert serving_backend("aotinductor", ["eager", "onnxruntime"]) == "eager"
    assert serving_backend("onnxruntime", ["eager"]) == "eager"
    assert serving_backend("onnxruntime", []) == "onnxruntime"
