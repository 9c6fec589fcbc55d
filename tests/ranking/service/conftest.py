"""Fixtures of the ranking service tests: helpers importable, the registry and the service on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest 9 no longer puts test directories on sys.path: make `rank_service_helpers` importable by the tests here.
sys.path.insert(0, str(Path(__file__).resolve().parent))
