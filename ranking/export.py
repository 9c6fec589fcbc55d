"""Export a trained model: ONNX (dynamic batch), AOTInductor package, INT8-quantised ONNX.

The exported graphs take the encoder's arrays positionally in the order of
``encoder.input_names()`` (ONNX input names are those names) and return
``logits`` [batch]; probabilities are computed by the scorer.

* :func:`export_onnx`: one dynamic dimension, ``batch``, shared by every input
  and the output; sequence and bag lengths are fixed by the encoder. The
  TorchScript (tracing) exporter by default, ``exporter="dynamo"`` for the
  ``torch.export``-based one (14x the CPU time here, same numbers).
* :func:`check_onnx` runs ONNX Runtime against PyTorch on encoder-shaped random
  inputs at batch 1, 7 and 256 and returns the largest absolute logit
  difference; export fails above :data:`ONNX_ATOL` (1e-4, fp32 reassociation
  noise on logits of size ~1-10 is ~1e-6).
* :func:`export_aot_inductor`: ``torch.export`` with the same dynamic batch
  (2 .. :data:`AOTI_MAX_BATCH` rows, traced at 8; batch 1 runs through the same
  kernels) and ``torch._inductor.aoti_compile_and_package``: gcc compiles
  the model into a shared library packaged as ``model.pt2`` (~30 s for
  DeepFM on this machine).
* :func:`quantize_int8`: ONNX Runtime ``quantize_dynamic`` (weights INT8 per
  channel, activations quantised on the fly, MatMul and Gemm only; embedding
  tables stay fp32).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ranking.encoding import INPUT_NAMES

ONNX_ATOL = 1e-4
AOTI_MAX_BATCH = 65_536
OPSET = 18


def positional(model: Any, names: tuple[str, ...]) -> Any:
    """`model` as an nn.Module with one keyword parameter per input (export needs a flat signature)."""
    import torch

    unknown = set(names) - set(INPUT_NAMES)
    if unknown:
        raise ValueError(f"unknown input names {sorted(unknown)}")

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, cat_ids: torch.Tensor, dense: torch.Tensor | None = None, bag_ids: torch.Tensor | None = None,
                    bag_mask: torch.Tensor | None = None, seq_ids: torch.Tensor | None = None,
                    seq_mask: torch.Tensor | None = None) -> torch.Tensor:
            given = {"cat_ids": cat_ids, "dense": dense, "bag_ids": bag_ids, "bag_mask": bag_mask,
                     "seq_ids": seq_ids, "seq_mask": seq_mask}
            return self.model({k: v for k, v in given.items() if v is not None})

    return Flat().eval()


def example_inputs(encoder: Any, batch: int, seed: int = 0) -> dict[str, Any]:
    import torch

    arrays = encoder.dummy(batch, seed=seed)
    return {n: torch.from_numpy(arrays[n]) for n in encoder.input_names()}


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress and warnings to stdout/stderr; keep CLI output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch._inductor", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(model: Any, encoder: Any, path: str | os.PathLike[str], *, opset: int = OPSET,
                exporter: str = "torchscript") -> Path:
    """``model.onnx`` with a dynamic batch axis; see the module docstring.

    `exporter`: ``"torchscript"`` (tracing; 0.3 s of CPU for DeepFM, measured) or
    ``"dynamo"`` (``torch.export``-based; 4.3 s, same graph semantics). Both
    are checked numerically by :func:`check_onnx`; the default is the cheap one
    because every training run and test exports.
    """
    import torch

    names = tuple(encoder.input_names())
    wrapped = positional(model.eval(), names)
    kwargs = example_inputs(encoder, 8)
    path = Path(path)
    with _quiet(), torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=AOTI_MAX_BATCH)
            torch.onnx.export(wrapped, (), str(path), kwargs=kwargs, input_names=list(names), output_names=["logits"],
                              dynamic_shapes={n: {0: batch} for n in names}, dynamo=True, external_data=False,
                              opset_version=opset, verbose=False)
        elif exporter == "torchscript":
            ordered = _Ordered(model.eval(), names)
            torch.onnx.export(ordered, tuple(kwargs[n] for n in names), str(path), input_names=list(names),
                              output_names=["logits"], dynamic_axes={n: {0: "batch"} for n in [*names, "logits"]},
                              dynamo=False, opset_version=opset)
        else:
            raise ValueError(f"exporter must be 'torchscript' or 'dynamo', not {exporter!r}")
    return path


def _Ordered(model: Any, names: tuple[str, ...]) -> Any:
    """`model` taking its inputs positionally in `names` order (for tracing)."""
    import torch

    class Ordered(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(names, args)))

    return Ordered().eval()


def check_onnx(model: Any, encoder: Any, path: str | os.PathLike[str], batch_sizes: tuple[int, ...] = (1, 7, 256),
               atol: float = ONNX_ATOL) -> float:
    """Largest |logit(ONNX Runtime) - logit(PyTorch)| over random inputs; raises above `atol`."""
    import onnxruntime as ort
    import torch

    from ranking.backends.onnx_runtime import session_options

    sess = ort.InferenceSession(str(path), sess_options=session_options(1), providers=["CPUExecutionProvider"])
    worst = 0.0
    names = tuple(encoder.input_names())
    for b in batch_sizes:
        arrays = encoder.dummy(b, seed=100 + b)
        got = sess.run(["logits"], {n: arrays[n] for n in names})[0]
        with torch.inference_mode():
            want = model.eval()({n: torch.from_numpy(arrays[n]) for n in names}).numpy()
        worst = max(worst, float(np.max(np.abs(got - want))) if b else 0.0)
    if worst > atol:
        raise ValueError(f"ONNX export of {path} differs from PyTorch by {worst:.3g} (> {atol})")
    return worst


def export_aot_inductor(model: Any, encoder: Any, path: str | os.PathLike[str]) -> Path:
    """``model.pt2``: an AOTInductor package with a dynamic batch axis (compiles with gcc; tens of seconds)."""
    import torch

    names = tuple(encoder.input_names())
    wrapped = positional(model.eval(), names)
    kwargs = example_inputs(encoder, 8)
    batch = torch.export.Dim("batch", min=2, max=AOTI_MAX_BATCH)
    path = Path(path)
    with _quiet(), torch.no_grad():
        ep = torch.export.export(wrapped, (), kwargs=kwargs, dynamic_shapes={n: {0: batch} for n in names})
        out = torch._inductor.aoti_compile_and_package(ep, package_path=str(path))
    return Path(out)


def quantize_int8(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Dynamic INT8 quantisation of the MatMul/Gemm weights with ONNX Runtime."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    return Path(out_path)


__all__ = ["AOTI_MAX_BATCH", "ONNX_ATOL", "check_onnx", "example_inputs", "export_aot_inductor", "export_onnx",
           "positional", "quantize_int8"]
