"""Scoring backends: one class per runtime, all with ``run(arrays) -> logits`` (float32 [batch]).

=================== =========================== ===============================================
name                file                        runtime
=================== =========================== ===============================================
``eager``           model.pt                    PyTorch eager (``torch.inference_mode``)
``onnxruntime``     model.onnx                  ONNX Runtime CPU, all graph optimisations
``onnxruntime-int8`` model.int8.onnx            ONNX Runtime CPU, dynamically quantised MatMuls
``aotinductor``     model.pt2                   ``torch._inductor.aoti_load_package``
``tensorrt``        model.onnx -> cached engine TensorRT FP16 on a CUDA GPU
=================== =========================== ===============================================

The scorer splits a batch into slices of at most ``backend.max_batch`` rows
(0: no limit). CPU backends use :data:`CPU_CHUNK_ROWS` = 1024 (override with
``load_scorer(..., chunk_rows=N)``): measured (``bench rank``), one call on
4,096 rows ran at 0.78x (DeepFM) and 0.72x (DIN) the samples/s of a call on
1,024 -- the activations of 4,096 rows fall out of the caches -- so four
1,024-row calls beat one 4,096-row call. TensorRT takes up to 4,096 rows
(its optimisation profile).

``threads`` is the intra-op thread count. PyTorch's is process-wide
(``torch.set_num_threads``): eager and AOTInductor scorers in one process
share the last value set.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ranking.artifact import ArtifactError


CPU_CHUNK_ROWS = 1024


class BackendUnavailable(ArtifactError):
    """The backend's runtime is not installed here, or it needs a device this machine lacks."""


_BACKENDS = {
    "eager": ("ranking.backends.eager", "EagerBackend"),
    "onnxruntime": ("ranking.backends.onnx_runtime", "OnnxRuntimeBackend"),
    "onnxruntime-int8": ("ranking.backends.onnx_runtime", "OnnxRuntimeInt8Backend"),
    "aotinductor": ("ranking.backends.aot_inductor", "AOTInductorBackend"),
    "tensorrt": ("ranking.backends.tensorrt", "TensorRTBackend"),
}
BACKEND_NAMES = tuple(_BACKENDS)


def load_backend(name: str, artifact_dir: Path, manifest: Any, threads: int, **options: Any) -> Any:
    try:
        module, cls = _BACKENDS[name]
    except KeyError:
        raise ArtifactError(f"unknown backend {name!r}; known: {', '.join(_BACKENDS)}") from None
    return getattr(importlib.import_module(module), cls)(Path(artifact_dir), manifest, threads, **options)


def serving_backend(configured: str, carried: list[str] | tuple[str, ...], *, int8: bool = True) -> str:
    """The backend a replica serves an artifact on: `configured`, except that with `int8` the ``onnxruntime``
    backend serves the artifact's INT8 copy (``onnxruntime-int8``) when the artifact carries one; an artifact
    without the configured backend is served on its first backend (its order: eager, onnxruntime, ...).

    Why INT8 by default (``ranking.int8``; DeepFM on MovieLens, artifact deepfm-20261128T091622,
    ``cascade rank evaluate``, 10,000 test rows): test AUC 0.7478 -> 0.7476 (-0.0002), behaviour-rich AUC
    0.75625 -> 0.75622, logloss 0.5869 -> 0.5867, mean |delta p| 0.0135 (max 0.087), and 2.2x the
    samples/s (93k -> 209k on 2 threads); one 1,000-row call 4.6-5.7 ms against 7.4-11 ms.
    """
    if int8 and configured == "onnxruntime" and "onnxruntime-int8" in carried:
        return "onnxruntime-int8"
    if configured in carried or not carried:
        return configured
    return carried[0]


def available_backends(manifest: Any) -> list[str]:
    """Backends of `manifest` whose runtime can start on this machine (TensorRT needs tensorrt and a GPU)."""
    out = []
    for b in manifest.backends:
        if b == "tensorrt":
            from ranking.backends.tensorrt import tensorrt_available

            if not tensorrt_available():
                continue
        out.append(b)
    return out


__all__ = ["BACKEND_NAMES", "CPU_CHUNK_ROWS", "BackendUnavailable", "available_backends", "load_backend", "serving_backend"]
