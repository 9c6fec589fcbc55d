"""TensorRT: an FP16 engine built from ``model.onnx`` on the GPU host, cached on disk.

Build: ``trt.OnnxParser`` over the artifact's ONNX file, ``BuilderFlag.FP16``,
one optimisation profile per engine covering the dynamic batch axis with
``min = 1, opt = 1024, max = 4096`` rows (:data:`PROFILE`; the scorer splits
larger batches), a 1 GiB workspace. Building takes tens of seconds to minutes,
so the serialised engine is cached under ``cache_dir`` (default
``<paths.var_dir>/tensorrt``) keyed by the ONNX file's sha256, the GPU's name
and compute capability, and the TensorRT version: a different model, card or
runtime never picks up a stale engine. A corrupt or incompatible cache file is
rebuilt.

Run (TensorRT >= 10 tensor API): ``set_input_shape`` per input, device buffers
from PyTorch's CUDA allocator (pinned host staging is not worth it at these
sizes), ``set_tensor_address``, ``execute_async_v3`` on a private CUDA stream,
then a synchronous copy of the logits back. Inputs are cast to the engine's
tensor types (the ONNX parser may narrow int64 ids to int32).

Only importable where ``tensorrt`` is installed; :func:`tensorrt_available`
says whether this machine can build engines (tensorrt, a CUDA build of torch,
a visible GPU). Tests skip otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ranking.artifact import ONNX_FILE, ArtifactError, sha256_file

PROFILE = (1, 1024, 4096)  # min, opt, max rows
WORKSPACE_BYTES = 1 << 30


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def engine_cache_key(onnx_sha256: str, gpu_name: str, capability: tuple[int, int], trt_version: str,
                     profile: tuple[int, int, int] = PROFILE, fp16: bool = True) -> str:
    """File name of a cached engine: model hash, GPU, TensorRT version, profile and precision."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    extra = hashlib.sha256(repr((profile, fp16)).encode()).hexdigest()[:8]
    return f"{onnx_sha256[:16]}-{gpu}-sm{capability[0]}{capability[1]}-trt{trt_version}-{extra}.engine"


def _default_cache_dir() -> Path:
    from cascade.config import get_config

    return get_config().paths.var_dir / "tensorrt"


def build_engine(onnx_path: Path, *, fp16: bool = True, profile: tuple[int, int, int] = PROFILE,
                 workspace_bytes: int = WORKSPACE_BYTES) -> bytes:
    """A serialised TensorRT engine of `onnx_path` with a dynamic batch profile."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    lo, opt, hi = profile
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(int(d) for d in tensor.shape[1:])
        if any(d < 0 for d in rest):
            raise ArtifactError(f"TensorRT: input {tensor.name!r} has a dynamic non-batch axis {tuple(tensor.shape)}")
        opt_profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, artifact_dir: Path, manifest: Any, threads: int, *, cache_dir: str | os.PathLike[str] | None = None,
                 fp16: bool = True, device: int = 0, **_: Any) -> None:
        from ranking.backends import BackendUnavailable

        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable("backend 'tensorrt' needs the tensorrt package (pip install tensorrt) on a CUDA host") from None
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("backend 'tensorrt' needs a CUDA GPU and a CUDA build of torch for device buffers")
        self.trt = trt
        self.torch = torch
        self.threads = threads
        self.max_batch = PROFILE[2]
        self.device = torch.device("cuda", device)
        onnx_path = Path(artifact_dir) / ONNX_FILE
        props = torch.cuda.get_device_properties(self.device)
        key = engine_cache_key(manifest.files.get(ONNX_FILE) or sha256_file(onnx_path), props.name,
                               (props.major, props.minor), trt.__version__, PROFILE, fp16)
        cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        self.engine_path = cache / key
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = None
        if self.engine_path.is_file():
            engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())  # None when incompatible
        if engine is None:
            with torch.cuda.device(self.device):
                blob = build_engine(onnx_path, fp16=fp16)
            tmp = self.engine_path.with_name(f".{self.engine_path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(blob)
            os.replace(tmp, self.engine_path)
            engine = self.runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise ArtifactError(f"TensorRT could not deserialise the engine {self.engine_path}")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        self.names = tuple(manifest.inputs)
        self.output = "logits"
        self._dtypes = {n: _torch_dtype(torch, trt, engine.get_tensor_dtype(n)) for n in (*self.names, self.output)}
        self._lock = threading.Lock()

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        n = next(iter(arrays.values())).shape[0]
        with self._lock, torch.cuda.stream(self.stream):
            keep = []
            for name in self.names:
                t = torch.from_numpy(arrays[name]).to(self.device, non_blocking=True).to(self._dtypes[name])
                keep.append(t)
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            out = torch.empty((n,), dtype=self._dtypes[self.output], device=self.device)
            self.context.set_tensor_address(self.output, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            result = out.float().cpu()  # synchronises with the stream
        return result.numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None


def _torch_dtype(torch: Any, trt: Any, dt: Any) -> Any:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if dt not in table:
        raise ArtifactError(f"TensorRT tensor type {dt} is not supported by this backend")
    return table[dt]
