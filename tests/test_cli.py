"""The command line as a newcomer reads it: help texts without placeholders or stray text, no 80-column wrap."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from brainae.cli import app


def _command_names() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_listed() -> None:
    names = _command_names()
    for expected in ("inspect", "prepare", "train", "evaluate", "stats", "report", "denoise", "demo"):
        assert expected in names


@pytest.mark.parametrize("name", [None, *_command_names()])
def test_help_has_no_placeholders_or_stray_text(name: str | None) -> None:
    text = _help(*([name] if name else []))
    assert "<bool>" not in text  # a flag takes no value
    assert "{" not in text and "}" not in text  # arguments are FOLDER, not {folder}
    # markup eaten by rich leaves a space before punctuation ("epochs ; with", "Run folder .")
    assert not re.search(r"\w \.(\s|$)", text), text
    assert not re.search(r"\w ;", text), text
    assert "Usage: brainae" in text


def test_flags_take_no_value_and_help_says_so() -> None:
    text = _help("prepare")
    line = next(ln for ln in text.splitlines() if "--force" in ln)
    assert "<" not in line  # no value placeholder on the flag
    result = CliRunner().invoke(app, ["prepare", "x", "--out", "y", "--force", "true"])
    assert result.exit_code != 0  # "--force true" is not a thing: the help must not suggest it


def test_defaults_and_literal_brackets_are_shown() -> None:
    text = _help("prepare")
    assert "[default: 128]" in text  # --size
    assert "*.nii[.gz]" in text  # brackets in help strings are text, not rich markup
    assert "FOLDER" in text.split("\n", 3)[1] + text  # the usage line names the argument


def test_help_is_not_wrapped_at_80_columns_in_a_log() -> None:
    lines = _help("prepare").splitlines()
    assert max(len(ln) for ln in lines) > 80
    docstring = (
        "selection.csv, split.csv, settings.json"  # one docstring sentence, not broken at a source line
    )
    assert any(docstring in ln for ln in lines)


def test_long_paths_in_output_are_not_split(tmp_path) -> None:
    missing = tmp_path / ("a-long-folder-name-" * 8) / "scans"
    result = CliRunner().invoke(app, ["inspect", str(missing), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    error = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and str(missing) in error[0], result.output


# ------------------------------------------------------------------------------------------------ progress


def test_progress_in_a_log_is_periodic_lines_with_time_left(cohort, tmp_path, monkeypatch) -> None:
    import brainae.cli._app as cli_app

    monkeypatch.setattr(cli_app, "LOG_EVERY_S", 0.0)  # a line after every volume instead of every 10 s
    result = CliRunner().invoke(app, ["inspect", str(cohort), "--out", str(tmp_path / "inspect")])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("inspecting: ")]
    periodic = [
        ln for ln in lines if re.fullmatch(r"inspecting: \d/8 \(\d+ %\), \d+ s so far, about \d+ s left", ln)
    ]
    assert len(periodic) == 7, result.output  # 1/8 .. 7/8
    assert lines[-1].startswith("inspecting: 8/8 done in "), result.output
    assert "\x1b[" not in result.output  # no terminal escapes in a log


def test_progress_in_a_log_is_quiet_between_periods(cohort, tmp_path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(cohort), "--out", str(tmp_path / "inspect")])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("inspecting: ")]
    assert lines == [lines[-1]] and lines[-1].startswith("inspecting: 8/8 done in ")  # a fast step: one line


def test_duration_reads_as_a_person_would_say_it() -> None:
    from brainae.cli._app import duration

    assert duration(8.4) == "8 s"
    assert duration(75.3) == "1 min 15 s"
    assert duration(3 * 3600 + 120) == "3 h 02 min"


def test_help_text_is_reflowed_but_lists_keep_their_lines() -> None:
    from brainae.cli._app import _reflow

    text = "First line\n  continues [default: 1].\n\nList:\n- a b\n  c\n- d\n\fhidden"
    assert _reflow(text) == "First line continues \\[default: 1].\n\nList:\n- a b c\n- d\fhidden"


def test_progress_on_a_terminal_is_a_rich_bar_with_the_time_left(monkeypatch) -> None:
    import io

    import brainae.cli._app as cli_app

    stream = io.StringIO()
    terminal = cli_app._Console(file=stream, force_terminal=True, width=100, soft_wrap=True)
    monkeypatch.setattr(cli_app, "err_console", terminal)
    assert list(cli_app.track(range(5), "working hard")) == [0, 1, 2, 3, 4]
    text = stream.getvalue()
    assert "working hard" in text and "left" in text and "5/5" in text
    assert "done in" not in text  # the log lines are for logs only


def test_log_progress_ends_with_done_also_under_zip(monkeypatch) -> None:
    import io

    import brainae.cli._app as cli_app

    stream = io.StringIO()
    monkeypatch.setattr(cli_app, "err_console", cli_app._Console(file=stream, soft_wrap=True))
    names = ["a", "b", "c"]
    pairs = list(zip(names, cli_app.track(iter([1, 2, 3]), "measuring", total=3)))  # zip stops at names
    assert pairs == [("a", 1), ("b", 2), ("c", 3)]
    assert stream.getvalue().startswith("measuring: 3/3 done in ")
    stream.truncate(0), stream.seek(0)
    for _ in cli_app.track(range(5), "stopped early"):
        break
    assert "done" not in stream.getvalue()  # a step that did not finish does not say it did
