"""The `cascade` command lists its sub-commands and refuses unknown ones clearly."""

from __future__ import annotations

import pytest

from cascade.cli import main


def test_help_lists_commands(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "bench", "stack"):
        assert command in out


def test_unknown_command_is_an_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "unknown command" in capsys.readouterr().err
