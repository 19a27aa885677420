"""The typer application and the wrapper that turns library errors into one clear line.

Every command module registers its commands with :func:`command`, which behaves like ``app.command`` and
also catches :class:`~brainae.errors.BrainaeError` (printed as ``error: ...``, exit code 1) and shows
:class:`~brainae.errors.BrainaeWarning` as one ``warning: ...`` line each. Heavy imports (torch, pandas,
matplotlib) happen inside the commands, so ``brainae --help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
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
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
console = Console(highlight=False, markup=False)

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


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Register a typer command whose library errors become one ``error:`` line and exit code 1."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
            from brainae.errors import BrainaeError, BrainaeWarning

            old = warnings.showwarning
            warnings.showwarning = _show_warning
            try:
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
                    raise
                fail(text.replace("\n", " "))
            finally:
                warnings.showwarning = old

        app.command(*args, **kwargs)(wrapper)
        return func

    return decorate


def track(iterable: Iterable[T], description: str = "working", total: int | None = None) -> Iterator[T]:
    """A rich progress bar over ``iterable`` on stderr (hidden when stderr is not a terminal)."""
    from rich.progress import track as rich_track

    yield from rich_track(iterable, description=description, total=total, console=err_console, transient=True)


def main() -> None:
    """Entry point of the ``brainae`` command."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        err_console.print("[red]error:[/red] interrupted", markup=True)
        sys.exit(130)
