"""AOTInductor: ``model.pt2`` compiled ahead of time by ``cascade rank export`` (torch.export + Inductor, gcc).

The package takes the inputs as keyword arguments (the manifest's names) and has a
dynamic batch axis (1 .. ``ranking.export.AOTI_MAX_BATCH``); the scorer
splits batches into :data:`ranking.backends.CPU_CHUNK_ROWS` rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ranking.artifact import AOTI_FILE, ArtifactError


class AOTInductorBackend:
    name = "aotinductor"

    def __init__(self, artifact_dir: Path, manifest: Any, threads: int, *, chunk_rows: int | None = None, **_: Any) -> None:
        import torch

        from ranking.backends import CPU_CHUNK_ROWS
        from ranking.export import AOTI_MAX_BATCH

        self.threads = threads
        chunk = CPU_CHUNK_ROWS if chunk_rows is None else chunk_rows
        self.max_batch = min(AOTI_MAX_BATCH, chunk) if chunk else AOTI_MAX_BATCH
        torch.set_num_threads(max(1, threads))
        self.torch = torch
        try:
            self.runner = torch._inductor.aoti_load_package(str(artifact_dir / AOTI_FILE))
        except Exception as exc:  # noqa: BLE001 - a package from another torch/CPU fails here
            raise ArtifactError(f"{artifact_dir}: cannot load {AOTI_FILE}: {type(exc).__name__}: {exc}") from None
        self.names = tuple(manifest.inputs)

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.runner(**{n: torch.from_numpy(arrays[n]) for n in self.names})
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.numpy()
