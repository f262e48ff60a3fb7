"""One-line errors for every command-line entry point; the traceback only with `--debug`.

Each CLI module ends with `sys.exit(cli_errors.run(main))`. `run` calls `main(argv)` and turns a
user error into `error: <message>` on stderr and exit code 2:
  - every `ValueError` (the project's own errors all derive from it: ConfigError, CheckpointError,
    ExportError, SafetensorsError, DamagedCheckpointError, NonFiniteError, the data/eval input
    errors, ...);
  - every `OSError` (missing file, a path under a file, permission denied, read-only file system,
    no space left on device), printed with the path it concerns;
  - an exception whose cause chain holds one of these (for example a write that failed inside an
    asynchronous checkpoint thread and came back wrapped).
A failed write that TensorStore reports as a ValueError with an OS error code (a full disk while
Orbax saves) is shown as that OSError. Log records in which Orbax's save threads report the same
error before the main thread raises it, and TensorStore's late `Event loop is closed` callbacks,
go to a log file in the temporary folder that the `error:` line names (`BackgroundLog`). Anything else is a bug, and keeps its traceback. `--debug` anywhere on the command line, or
`BIOINSTRUCT_DEBUG=1` in the environment, re-raises user errors too, with the full traceback.
Ctrl-C prints `interrupted` and exits 130, as shells expect.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import tempfile
import traceback
from typing import Any, Callable, Iterator, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "BIOINSTRUCT_DEBUG"
EXIT_USER_ERROR = 2
TRANSFORMERS_ADVISORY_ENV = "TRANSFORMERS_NO_ADVISORY_WARNINGS"  # set: transformers drops its advisory notes
EXIT_INTERRUPTED = 130
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


def add_debug_argument(parser: Any) -> None:
    """List `--debug` in a parser's --help (`run` removes the flag before the parser sees it)."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")


def _chain(err: BaseException) -> Iterator[BaseException]:
    """`err`, then its causes / contexts and the members of exception groups, each once."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(getattr(e, "exceptions", ()) or ())
        todo.extend((e.__cause__, e.__context__))


def user_error(err: BaseException) -> BaseException | None:
    """The user error behind `err` (itself or one in its cause chain), or None for a bug."""
    found = next((e for e in _chain(err) if isinstance(e, USER_ERRORS)), None)
    return _storage_os_error(found) if found is not None else None


def _storage_os_error(err: BaseException) -> BaseException:
    """TensorStore (Orbax's storage) reports a failed write as a ValueError whose text holds the OS
    error code and the file: turn that into the OSError it stands for."""
    if isinstance(err, OSError):
        return err
    text = str(err)
    code = re.search(r"os_error_code='?(\d+)", text)
    if not code:
        return err
    path = (re.search(r'(?:Failed writing|Error writing|Error reading|file): "([^"]+)"', text)
            or re.search(r'local file "([^"]+)"', text))
    errnum = int(code.group(1))
    return OSError(errnum, os.strerror(errnum), path.group(1) if path else None)


class BackgroundLog:
    """Where the echoes of a background thread's error go instead of the terminal: a file in the
    temporary folder (`bioinstruct-PID-background.log`, opened at the first echo; the disk that
    filled up may be the output's), named by the `error:` line `report` prints."""

    path: str | None = None
    _file: Any = None

    @classmethod
    def write(cls, text: str) -> None:
        try:
            if cls._file is None:
                cls.path = os.path.join(tempfile.gettempdir(), f"bioinstruct-{os.getpid()}-background.log")
                cls._file = open(cls.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life
            cls._file.write(text if text.endswith("\n") else text + "\n")
            cls._file.flush()
        except OSError:  # nowhere to write: the echo is dropped
            pass


class _BackgroundErrorFilter(logging.Filter):
    """Moves to the `BackgroundLog` the log records in which Orbax's save threads and asyncio report
    an error that the main thread raises again (and `run` then reports once): records that say a
    thread "raised an exception", an "exception was never retrieved", or carry a user error (a
    full disk) as their exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        message = str(record.msg)
        exc = record.exc_info[1] if record.exc_info else None
        if not ("raised an exception" in message or "exception was never retrieved" in message
                or (exc is not None and user_error(exc) is not None)):
            return True
        BackgroundLog.write(logging.Formatter().format(record))
        return False


def _late_callback(exc_type: type, value: BaseException) -> bool:
    """TensorStore's callbacks that complete after a failed save's event loop closed print
    `RuntimeError: Event loop is closed`, once per pending write."""
    return issubclass(exc_type, RuntimeError) and str(value) == "Event loop is closed"


def quiet_background_errors() -> None:
    """Move the echoes of an error that `run` reports once to the `BackgroundLog` (see the module
    docstring). TensorStore's threads print their late callbacks through `sys.unraisablehook` (a
    write that failed on a full disk: one `Event loop is closed` traceback per pending write), older
    paths through `sys.excepthook`; both hooks take exactly those and pass everything else on."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _BackgroundErrorFilter) for f in logger.filters):
            logger.addFilter(_BackgroundErrorFilter())
    if not getattr(sys.unraisablehook, "_bioinstruct_quiet", False):
        previous_unraisable = sys.unraisablehook

        def unraisable(info):
            if info.exc_type is not None and _late_callback(info.exc_type, info.exc_value):
                BackgroundLog.write("".join(traceback.format_exception(info.exc_type, info.exc_value,
                                                                       info.exc_traceback)))
            else:
                previous_unraisable(info)

        unraisable._bioinstruct_quiet = True  # type: ignore[attr-defined]
        sys.unraisablehook = unraisable
    if getattr(sys.excepthook, "_bioinstruct_quiet", False):
        return
    previous = sys.excepthook

    def hook(exc_type, value, tb):
        if _late_callback(exc_type, value):
            BackgroundLog.write("".join(traceback.format_exception(exc_type, value, tb)))
        else:
            previous(exc_type, value, tb)

    hook._bioinstruct_quiet = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def describe(err: BaseException) -> str:
    """One line for a user error: an OSError with its path(s), anything else its message."""
    if isinstance(err, OSError) and err.strerror:
        paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        what = err.strerror
        if err.errno == errno.ENOSPC:
            what = "no space left on device (free some space or choose another output folder)"
        elif err.errno == errno.EROFS:
            what = "read-only file system (choose a writable output folder)"
        return f"{paths}: {what}" if paths else what
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    return text


def report(err: BaseException, file: Any = None) -> int:
    """Print `error: ...` for a user error; returns the exit code (2). When background threads
    echoed the error, the line names the file their messages went to."""
    line = f"error: {describe(_storage_os_error(err))}"
    if BackgroundLog.path:
        line += f" [background threads' messages: {BackgroundLog.path}]"
    print(line, file=file or sys.stderr)
    return EXIT_USER_ERROR


def report_or_raise(err: BaseException) -> int:
    """For a CLI's own `except` block: re-raise in debug mode, else print the one line (returns 2)."""
    if debug_enabled():
        raise err
    return report(err)


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """`main(argv)` with user errors as one line and exit code 2 (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    if DEBUG_FLAG in argv:
        os.environ[DEBUG_ENV] = "1"  # also for a CLI that re-executes itself or starts subprocesses
    argv = [a for a in argv if a != DEBUG_FLAG]
    if not debug:
        quiet_background_errors()
    # transformers' advisory notes, such as "PyTorch was not found. Models won't be available" on
    # the base install: this project reads only tokenizers and configs through transformers, so the
    # note is noise that a newcomer reads as an error. An explicit setting of the variable wins.
    os.environ.setdefault(TRANSFORMERS_ADVISORY_ENV, "1")
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - user errors are reported, bugs re-raised below
        cause = user_error(err)
        if debug or cause is None:
            raise
        return report(cause)
    return code if isinstance(code, int) else 0


__all__ = ["run", "report", "report_or_raise", "describe", "user_error", "debug_enabled", "add_debug_argument",
           "DEBUG_ENV", "DEBUG_FLAG", "EXIT_USER_ERROR"]
