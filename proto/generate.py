"""Generate the Python code for the cascade.v1 gRPC contracts.

The ``.proto`` sources live in ``proto/cascade/v1``. Their generated modules
(``*_pb2.py``, ``*_pb2.pyi`` type stubs and ``*_pb2_grpc.py``) are committed
next to them. Generation runs ``grpc_tools.protoc`` from the repository root
with ``-I .`` (plus grpc_tools' bundled well-known protos), so proto imports
are written relative to the repository root (``import
"proto/cascade/v1/common.proto";``) and the generated code imports as
``from proto.cascade.v1 import feed_pb2, feed_pb2_grpc``.

Usage::

    python -m proto.generate           # regenerate the committed modules
    python -m proto.generate --check   # exit 1 and list stale files if the
                                       # committed modules are out of date

The generated code depends on the grpcio-tools version (its bundled protoc
fixes the protobuf gencode version); regenerate after upgrading it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

#: Repository root: the directory that contains the ``proto`` package.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Directory of the ``.proto`` sources, relative to the repository root.
PROTO_DIR = Path("proto") / "cascade" / "v1"

#: Suffixes of the files protoc generates for each ``.proto`` source.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_sources(root: Path = REPO_ROOT) -> list[str]:
    """Return the ``.proto`` sources as sorted paths relative to ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in (root / PROTO_DIR).glob("*.proto"))


def well_known_protos_dir() -> Path:
    """Return grpc_tools' bundled include dir (``google/protobuf/*.proto``)."""
    return Path(str(resources.files("grpc_tools") / "_proto"))


def _run_protoc(args: list[str], root: Path = REPO_ROOT) -> None:
    """Run ``grpc_tools.protoc`` from ``root`` with ``-I .`` and ``args``."""
    sources = proto_sources(root)
    if not sources:
        raise RuntimeError(f"no .proto files found under {root / PROTO_DIR}")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        ".",
        "-I",
        str(well_known_protos_dir()),
        *args,
        *sources,
    ]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"protoc failed with exit code {proc.returncode}:\n{proc.stderr or proc.stdout}"
        )


def _generated(root: Path) -> dict[str, Path]:
    """Map relative path -> file for every generated module under ``root``."""
    out = {}
    for path in sorted((root / PROTO_DIR).glob("*")):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            out[path.relative_to(root).as_posix()] = path
    return out


def generate(out_dir: Path) -> list[str]:
    """Compile every ``.proto`` into ``out_dir``.

    ``out_dir`` is an output root: files land in ``out_dir/proto/cascade/v1``
    (pass the repository root to regenerate in place). Existing generated
    files are overwritten; generated files whose ``.proto`` was removed are
    left alone (``main()`` deletes those when regenerating in place).

    Returns the generated files as sorted paths relative to ``out_dir``.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    _run_protoc(
        [
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
        ]
    )
    expected = {
        f"{src[: -len('.proto')]}{suffix}"
        for src in proto_sources()
        for suffix in GENERATED_SUFFIXES
    }
    return sorted(rel for rel in _generated(out_dir) if rel in expected)


def build_descriptor_set(out_file: Path, include_source_info: bool = True) -> Path:
    """Write a ``FileDescriptorSet`` of the cascade.v1 protos to ``out_file``.

    With ``include_source_info`` the set carries ``source_code_info`` (comment
    and location data), which the contract tests use to check documentation.
    Imports outside the repository (well-known types) are not included.
    """
    out_file = Path(out_file).resolve()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    args = [f"--descriptor_set_out={out_file}"]
    if include_source_info:
        args.append("--include_source_info")
    _run_protoc(args)
    return out_file


def stale_files() -> list[str]:
    """Return committed generated files that differ from a fresh generation.

    Regenerates into a temporary directory and compares byte for byte.
    The result lists, as sorted paths relative to the repository root,
    files that are missing, out of date, or orphaned (generated files with
    no ``.proto`` source). An empty list means the committed code is current.
    """
    with tempfile.TemporaryDirectory(prefix="cascade-proto-") as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh = _generated(fresh_root)
        committed = _generated(REPO_ROOT)
        stale = []
        for rel in sorted(set(fresh) | set(committed)):
            if rel not in fresh or rel not in committed:
                stale.append(rel)
            elif fresh[rel].read_bytes() != committed[rel].read_bytes():
                stale.append(rel)
        return stale


def _regenerate_in_place() -> list[str]:
    """Regenerate into the repository; return the files written or deleted."""
    changed = []
    with tempfile.TemporaryDirectory(prefix="cascade-proto-") as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh = _generated(fresh_root)
        committed = _generated(REPO_ROOT)
        for rel, src in fresh.items():
            dst = REPO_ROOT / rel
            data = src.read_bytes()
            if not dst.exists() or dst.read_bytes() != data:
                dst.write_bytes(data)
                changed.append(rel)
        for rel, path in committed.items():
            if rel not in fresh:
                path.unlink()
                changed.append(rel)
    return sorted(changed)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m proto.generate",
        description="Generate Python code for the cascade.v1 gRPC contracts.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 and list stale files if the committed code is out of date",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated files (run `python -m proto.generate`):", file=sys.stderr)
            for rel in stale:
                print(f"  {rel}", file=sys.stderr)
            return 1
        print("generated proto code is up to date")
        return 0
    changed = _regenerate_in_place()
    for rel in changed:
        print(f"updated {rel}")
    print(f"generated code for {len(proto_sources())} proto files ({len(changed)} files changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
