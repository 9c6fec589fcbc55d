"""`run_service`: what every `cascade … serve` shares — clear exit codes for configuration errors."""

from __future__ import annotations

from cascade.config import load_config
from serving.entrypoint import run_service


class BadDefinitions(ValueError):
    pass


def _refuse(redis_url: str):
    raise BadDefinitions(f"definitions do not match the registry (redis {redis_url})")


def test_a_configuration_error_exits_1_with_its_message(capsys) -> None:
    config = load_config(environ={})
    code = run_service(config, "redis://127.0.0.1:1/0", _refuse, lambda s: "X", errors=(BadDefinitions,))
    assert code == 1
    assert "definitions do not match the registry" in capsys.readouterr().err


def test_an_unexpected_error_is_not_swallowed() -> None:
    config = load_config(environ={})

    def boom(redis_url: str):
        raise RuntimeError("bug")

    try:
        run_service(config, "redis://127.0.0.1:1/0", boom, lambda s: "X")
    except RuntimeError as exc:
        assert str(exc) == "bug"
    else:
        raise AssertionError("a programming error must surface, not become exit code 1")
