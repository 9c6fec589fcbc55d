"""PyTorch eager: the reference every other backend is checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class EagerBackend:
    name = "eager"

    def __init__(self, artifact_dir: Path, manifest: Any, threads: int, *, chunk_rows: int | None = None, **_: Any) -> None:
        import torch

        from ranking.backends import CPU_CHUNK_ROWS

        from ranking.artifact import load_model

        self.threads = threads
        self.max_batch = CPU_CHUNK_ROWS if chunk_rows is None else chunk_rows
        torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.model = load_model(artifact_dir)
        self.names = tuple(manifest.inputs)

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model({n: torch.from_numpy(arrays[n]) for n in self.names})
        return out.numpy()
