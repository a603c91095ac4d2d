"""resetfree-sim's command line: bad values are the flag the user typed, not an internal field."""

from __future__ import annotations

import pytest

from simulation.app.__main__ import build_parser, main


@pytest.mark.parametrize(("argv", "message"), [
    (["--robots", "0"], "argument --robots: must be at least 1, got 0"),
    (["--steps", "-5"], "argument --steps: must be at least 1, got -5"),
    (["--eval-episodes", "ten"], "argument --eval-episodes: expected an integer, got 'ten'"),
    (["--reset-every", "-1"], "argument --reset-every: must be at least 0, got -1"),
    (["--hz", "0"], "argument --hz: must be a positive number, got 0"),
])
def test_bad_numbers_are_plain_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(f"resetfree-sim: error: {message}") and "RunSpec" not in err, err


def test_good_numbers_parse() -> None:
    args = build_parser().parse_args(["--robots", "2", "--reset-every", "0", "--minutes", "1.5"])
    assert (args.robots, args.reset_every, args.minutes) == (2, 0, 1.5)
