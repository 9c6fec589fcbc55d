"""Fixtures of the recall tests (embedding tests live in tests/recall/embedding with their own)."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest's importlib mode does not put test directories on sys.path: make `recall_helpers` importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))
