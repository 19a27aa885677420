"""The typer application and the wrapper that turns library errors into one clear line.

Every command module registers its commands with :func:`command`, which behaves like ``app.command`` and
also catches :class:`~brainae.errors.BrainaeError` (printed as ``error: ...``, exit code 1) and shows
:class:`~brainae.errors.BrainaeWarning` as one ``warning: ...`` line each. Heavy imports (torch, pandas,
matplotlib) happen inside the commands, so ``brainae --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup

#: Width of ``--help`` when stdout is not a terminal (a log, a pipe): wide enough that option help and paths
#: are not split at 80 columns.
HELP_WIDTH_NOT_TTY = 120


def _reflow(text: str | None) -> str | None:
    """Join the lines of each paragraph of a docstring or help string and escape rich markup.

    Help strings are plain text: ``[default: 100]`` or ``*.nii[.gz]`` must show literally, not be read as rich
    markup (which silently drops them and leaves stray text such as "epochs ; with").
    """
    if not text:
        return text
    head, sep, tail = text.partition("\f")
    paragraphs = []
    for paragraph in head.strip().split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            item = line.strip()
            if lines and not item.startswith(("- ", "* ")):
                lines[-1] += " " + item  # a wrapped line: join it; a list item keeps its own line
            elif item:
                lines.append(item)
        paragraphs.append("\n".join(lines))
    return escape("\n\n".join(p for p in paragraphs if p)) + sep + tail


def _tidy_params(params: list[Any]) -> None:
    """Help rendering fixes for one command's parameters (in place).

    - a flag (``--force``, ``--augment/--no-augment``) shows no ``<bool>`` value placeholder: it takes none;
    - an argument is named in capitals (``FOLDER``), as in the usage line;
    - help strings are plain text (see :func:`_reflow`).
    """
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
            param.metavar = ""
        if isinstance(param, TyperArgument) and param.metavar is None and param.name:
            param.metavar = param.name.upper()
        if getattr(param, "help", None):
            param.help = _reflow(param.help)


class _HelpWidth:
    """Typer's help console is 80 columns wide when stdout is not a terminal; widen it there."""

    def __enter__(self) -> None:
        from typer import rich_utils

        self._old = rich_utils.MAX_WIDTH
        if rich_utils.MAX_WIDTH is None and not sys.stdout.isatty():
            rich_utils.MAX_WIDTH = HELP_WIDTH_NOT_TTY

    def __exit__(self, *exc: object) -> None:
        from typer import rich_utils

        rich_utils.MAX_WIDTH = self._old


class BrainaeCommand(TyperCommand):
    """A typer command whose ``--help`` has no placeholders on flags, capitalised arguments, plain help text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _reflow(self.help)
        _tidy_params(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _HelpWidth():
            super().format_help(ctx, formatter)


class BrainaeGroup(TyperGroup):
    """The ``brainae`` group: the same help fixes as :class:`BrainaeCommand` for ``brainae --help``."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _HelpWidth():
            super().format_help(ctx, formatter)


app = typer.Typer(
    cls=BrainaeGroup,
    name="brainae",
    help="Normative convolutional autoencoders for T1-weighted brain MRI: prepare, train, evaluate, apply.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root() -> None:
    """Normative convolutional autoencoders for T1-weighted brain MRI: prepare, train, evaluate, apply."""


# markup is off by default: file names such as "sub-01 [bold]run1.nii.gz" are printed literally; the few
# styled lines pass markup=True and escape what they interpolate.
#: Width of tables printed into a log or a pipe (rich's default there is 80 columns, which splits paths).
LOG_WIDTH = 1000


class _Console(Console):
    """A rich console that does not wrap at 80 columns when it writes to a log or a pipe."""

    def _size(self) -> ConsoleDimensions:
        dims = Console.size.fget(self)
        if self._width is None and "COLUMNS" not in self._environ and not self.is_terminal:
            return ConsoleDimensions(LOG_WIDTH, dims.height)
        return dims

    size = property(_size, Console.size.fset)


err_console = _Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
console = _Console(highlight=False, soft_wrap=True, markup=False)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    err_console.print(f"[yellow]warning:[/yellow] {escape(text)}", markup=True)


def fail(message: str, code: int = 1) -> None:
    """Print one error line (taken literally: file names are not read as markup) and exit with ``code``."""
    err_console.print(f"[red]error:[/red] {escape(message)}", markup=True)
    raise typer.Exit(code)


def say(message: str) -> None:
    """Print one line on stdout, literally (file names with ``[`` are not read as markup)."""
    console.print(message, markup=False)


def _os_failure(exc: BaseException) -> str | None:
    """One line for an operating-system error that escaped the library (else None)."""
    from brainae.io import write_error

    err = write_error(Path(getattr(exc, "filename", None) or "."), exc)
    if err is None:
        return None
    text = str(err)
    if not getattr(exc, "filename", None) and text.startswith(".: "):
        text = text[3:]
    return text


UNEXPECTED = "unexpected failure"
"""How the one line for an error brainae did not foresee (a bug) starts; tests assert it never appears."""


def _unexpected(exc: BaseException, command_name: str) -> str:
    """The one line for an exception brainae did not foresee: what it was, that outputs are written only
    whole (so nothing partial is left), and how to get the traceback for a report."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return (
        f"{UNEXPECTED} in brainae {command_name} ({type(exc).__name__}: {first}); no partial output was left: "
        "please report it with the command line (BRAINAE_DEBUG=1 shows the traceback)"
    )


def _check_numbers(values: dict[str, Any]) -> None:
    """One error line for a number option given as NaN or infinity (click's ranges let NaN through: every
    comparison with it is false)."""
    import math

    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"--{name.replace('_', '-')} {value}: give a finite number")


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Register a typer command whose library errors become one ``error:`` line and exit code 1."""

    def decorate(func: F) -> F:
        name = str(args[0]) if args else func.__name__

        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
            from brainae.errors import BrainaeError, BrainaeWarning

            old = warnings.showwarning
            warnings.showwarning = _show_warning
            try:
                _check_numbers(kw)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                    warnings.simplefilter("always", BrainaeWarning)
                    warnings.showwarning = _show_warning
                    return func(*a, **kw)
            except BrainaeError as exc:
                fail(str(exc).strip().replace("\n", " "))
            except KeyboardInterrupt:
                fail("interrupted", code=130)
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except Exception as exc:  # an OS error (permission, full disk) is one line, not a traceback
                text = _os_failure(exc)
                if text is None:
                    if os.environ.get("BRAINAE_DEBUG"):
                        raise
                    text = _unexpected(exc, name)
                fail(text.replace("\n", " "))
            finally:
                warnings.showwarning = old

        kwargs.setdefault("cls", BrainaeCommand)
        app.command(*args, **kwargs)(wrapper)
        return func

    return decorate


#: In a log (stderr not a terminal), a progress line at most this often (seconds), and one when a step ends.
LOG_EVERY_S = 10.0


def duration(seconds: float) -> str:
    """``75.3`` -> ``"1 min 15 s"``; ``8.2`` -> ``"8 s"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _log_lines(iterable: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    """Periodic one-line progress for a log: ``evaluating: 12/40 (30 %), 45 s so far, about 1 min 45 s left``.

    The closing ``done in`` line is printed also when the consumer stops asking after the last item (as
    ``zip(files, track(results))`` does), not when it stops early.
    """
    import time

    start = last = time.monotonic()
    done = 0
    finished = False
    try:
        for item in iterable:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= LOG_EVERY_S and (total is None or done < total):
                last = now
                elapsed = now - start
                if total:
                    left = elapsed / done * (total - done)
                    err_console.print(
                        f"{description}: {done}/{total} ({100 * done // total} %), {duration(elapsed)} so far, "
                        f"about {duration(left)} left"
                    )
                else:
                    err_console.print(f"{description}: {done} done, {duration(elapsed)} so far")
        finished = True
    except GeneratorExit:
        finished = total is not None and done + 1 >= total  # closed right after handing out the last item
        done = min(done + 1, total or done + 1) if finished else done
        raise
    finally:
        if finished:
            err_console.print(
                f"{description}: {done}" + (f"/{total}" if total else "") + f" done in "
                f"{duration(time.monotonic() - start)}"
            )


def track(iterable: Iterable[T], description: str = "working", total: int | None = None) -> Iterator[T]:
    """Progress over ``iterable`` on stderr, with an estimate of the time left.

    On a terminal a rich progress bar (removed when done); in a log or a pipe one line every
    :data:`LOG_EVERY_S` seconds and one when the step ends.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not err_console.is_terminal:
        yield from _log_lines(iterable, description, total)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        yield from progress.track(iterable, total=total, description=description)


def main() -> None:
    """Entry point of the ``brainae`` command."""
    # ANTs (the normative anomaly model's registration) repeats bit for bit only on one thread: the command
    # line gives reproducible maps unless the user asks for more threads (read when ITK starts).
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        err_console.print("[red]error:[/red] interrupted", markup=True)
        sys.exit(130)
