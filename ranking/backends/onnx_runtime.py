"""ONNX Runtime on CPU: ``model.onnx`` (fp32) or ``model.int8.onnx`` (dynamic INT8 MatMuls).

Session options: ``intra_op_num_threads = threads``, one inter-op thread and
sequential execution (one model call uses the intra-op pool; concurrency comes
from the dynamic batcher, not from parallel graph branches), every graph
optimisation (``ORT_ENABLE_ALL``: constant folding, node fusions, layout), no
thread spinning when idle (the machine is shared with Redis, Kafka and gRPC:
spinning burned a core between requests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ranking.artifact import ONNX_FILE, ONNX_INT8_FILE


def session_options(threads: int, *, spin: bool = False) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


class OnnxRuntimeBackend:
    name = "onnxruntime"
    file = ONNX_FILE

    def __init__(self, artifact_dir: Path, manifest: Any, threads: int, *, spin: bool = False,
                 chunk_rows: int | None = None, **_: Any) -> None:
        import onnxruntime as ort

        from ranking.backends import CPU_CHUNK_ROWS

        self.threads = threads
        self.max_batch = CPU_CHUNK_ROWS if chunk_rows is None else chunk_rows
        self.session = ort.InferenceSession(str(artifact_dir / self.file), sess_options=session_options(threads, spin=spin),
                                            providers=["CPUExecutionProvider"])
        self.names = tuple(i.name for i in self.session.get_inputs())
        self.output = self.session.get_outputs()[0].name

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], {n: arrays[n] for n in self.names})[0]


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    name = "onnxruntime-int8"
    file = ONNX_INT8_FILE
