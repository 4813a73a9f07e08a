"""What a long command of the checkout shows on the terminal: numbered steps, progress bars and results.

The terminal gets one line per step with the time elapsed since the start, the results the command reports,
and, while a step runs, a live line (what the step's runs last logged) and any progress bars (``rich``,
which Prefect depends on). Everything else the process writes goes to a log file instead: every logger's
records (Prefect's flow and task run lines, our modules'), Python warnings, and what libraries print. A
failure ends the command with the error and the log's path on the terminal and its traceback in the log.

    with Steps(total=2, log_path=home / "demo.log") as steps:
        steps.step("Generate data")
        steps.result("40,000 transactions")
        steps.step("Score them")
        with steps.progress("requests", total=40_000) as bar:
            ...
            bar.advance(1000)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

# ``run``: the flow or task run's name in brackets, when the record carries it (Prefect's run loggers do).
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(run)s: %(message)s"
# Loggers (and their children) whose INFO records show on the running step's live line: what its runs do now.
STATUS_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "flows", "model_store")
QUIET_STATUS = ("Finished in state", "View at ")


def clock(seconds: float) -> str:
    """``m:ss``."""
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class _Bar(BarColumn):
    """A bar only for tasks with a total: a step's own live line has none."""

    def render(self, task: Task) -> Any:
        return super().render(task) if task.total is not None else Text("")


class _Count(ProgressColumn):
    """``done/total unit``, for tasks with a total."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        unit = task.fields.get("unit", "")
        return Text(f"{int(task.completed):,}/{int(task.total):,} {unit}".rstrip(), style="progress.download")


@dataclass(frozen=True)
class Bar:
    """One progress bar of the running step (``Steps.progress``); safe to call from any thread."""

    _progress: Progress
    _task: TaskID

    def advance(self, amount: float = 1) -> None:
        self._progress.update(self._task, advance=amount)

    def update(
        self, *, description: str | None = None, completed: float | None = None, total: float | None = None
    ) -> None:
        self._progress.update(self._task, description=description, completed=completed, total=total)


class _LogFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        record.run = f" [{run}]" if run else ""
        return super().format(record)


class _StatusHandler(logging.Handler):
    """Shows the latest INFO record of a run on the running step's live line."""

    def __init__(self, steps: Steps) -> None:
        super().__init__(logging.INFO)
        self.steps = steps

    def emit(self, record: logging.LogRecord) -> None:
        if not any(record.name == name or record.name.startswith(f"{name}.") for name in STATUS_LOGGERS):
            return
        message = record.getMessage()
        if not message.startswith(QUIET_STATUS):
            self.steps.status(message)


class Steps:
    """Numbered steps of a command on the terminal, the rest of its output in ``log_path`` (see the module)."""

    def __init__(self, total: int, log_path: Path) -> None:
        self.total = total
        self.log_path = log_path
        self.number = 0
        self.title = ""
        self.started = time.monotonic()
        self._exit = ExitStack()
        self._step_task: TaskID | None = None

    def __enter__(self) -> Steps:
        # The terminal, kept before standard output and error are redirected to the log.
        self.console = Console(file=sys.stdout, soft_wrap=True, highlight=False)
        self._errors = Console(file=sys.stderr, soft_wrap=True, highlight=False)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Left open when the block ends: handlers libraries created meanwhile may still write to it.
        self.log: IO[str] = self.log_path.open("w", buffering=1)
        self._capture_logging()
        self._exit.enter_context(redirect_stdout(self.log))
        self._exit.enter_context(redirect_stderr(self.log))
        # One row per task, never wrapped: a narrow terminal shortens the descriptions instead.
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn(
                "{task.description}",
                markup=False,
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            _Bar(bar_width=24),
            _Count(table_column=Column(no_wrap=True)),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            refresh_per_second=5,
            expand=True,
            # Live lines only on a terminal: in a file or a CI log they would be noise.
            disable=not self.console.is_terminal,
        )
        self._progress.start()
        self._exit.callback(self._progress.stop)
        return self

    def _capture_logging(self) -> None:
        """Every record to the log: the root logger's handlers replaced, loggers that write to the terminal
        themselves pointed at the log, warnings logged."""
        root = logging.getLogger()
        handler = logging.StreamHandler(self.log)
        handler.setFormatter(_LogFormatter())
        saved_handlers, saved_level = root.handlers[:], root.level
        root.handlers = [handler, _StatusHandler(self)]
        # Libraries at WARNING; loggers that set their own level (Prefect's, ours) at theirs.
        root.setLevel(logging.WARNING)
        logging.captureWarnings(True)

        def restore_root() -> None:
            root.handlers, root.level = saved_handlers, saved_level
            logging.captureWarnings(False)

        self._exit.callback(restore_root)
        terminal = {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}
        for logger in logging.Logger.manager.loggerDict.values():
            for h in getattr(logger, "handlers", []):
                stream = isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                # A handler whose stream is a property (logging.lastResort's: sys.stderr at each call, which
                # the redirect below already sends to the log) cannot be pointed elsewhere, nor needs to be.
                if (
                    stream
                    and not isinstance(getattr(type(h), "stream", None), property)
                    and h.stream in terminal
                ):
                    previous = h.setStream(self.log)
                    self._exit.callback(h.setStream, previous)

    def step(self, title: str) -> None:
        """Start the next step: its line on the terminal, and a live line while it runs."""
        self._end_step()
        self.number += 1
        self.title = title
        self.console.print(
            Text.assemble(
                (f"[{self.number}/{self.total}] ", "bold cyan"),
                (title, "bold"),
                (f"   {clock(time.monotonic() - self.started)}", "dim"),
            )
        )
        # The title is on the line above: the live line is the step's number, what it does now and its time.
        self._step_task = self._progress.add_task(self._live_line(""), total=None)

    def result(self, text: str) -> None:
        """A line the command reports: indented under the running step."""
        self.console.print(Text(("    " if self.number else "") + text))

    def warn(self, text: str) -> None:
        self.console.print(Text(("    " if self.number else "") + "! " + text, style="yellow"))

    def status(self, text: str) -> None:
        """What the running step does now, on its live line (replaced by the next)."""
        if self._step_task is not None:
            self._progress.update(self._step_task, description=self._live_line(text))

    def _live_line(self, text: str) -> str:
        return f"[{self.number}/{self.total}] {' '.join(text.split())[:300]}".rstrip()

    @contextmanager
    def progress(self, description: str, total: float | None, unit: str = "") -> Iterator[Bar]:
        """A progress bar below the running step's line while the block runs (``total=None``: no bar)."""
        task = self._progress.add_task(description, total=total, unit=unit)
        try:
            yield Bar(self._progress, task)
        finally:
            self._progress.remove_task(task)

    def _end_step(self) -> None:
        if self._step_task is not None:
            self._progress.remove_task(self._step_task)
            self._step_task = None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end_step()
        if error is not None and not _clean_exit(error):
            logging.getLogger(__name__).error(
                "failed in step %d/%d (%s)", self.number, self.total, self.title, exc_info=(kind, error, tb)
            )
        self._exit.close()
        self.log.flush()
        if error is None or _clean_exit(error):
            return
        where = f"[{self.number}/{self.total}] {self.title}" if self.number else "before the first step"
        after = clock(time.monotonic() - self.started)
        if isinstance(error, KeyboardInterrupt):
            self._errors.print(Text(f"Interrupted in {where} after {after}.", style="yellow"))
        else:
            self._errors.print(Text(f"Failed in {where} after {after}:", style="bold red"))
            # The command's own SystemExit message says what to do; anything else is named with its type.
            message = str(error.code) if isinstance(error, SystemExit) else f"{type(error).__name__}: {error}"
            self._errors.print(Text(message))
        self._errors.print(Text(f"The full log, with the traceback: {self.log_path}"))
        code = 130 if isinstance(error, KeyboardInterrupt) else _exit_code(error)
        raise SystemExit(code) from None


def _clean_exit(error: BaseException) -> bool:
    return isinstance(error, SystemExit) and error.code in (0, None)


def _exit_code(error: BaseException) -> int:
    if isinstance(error, SystemExit) and isinstance(error.code, int):
        return error.code
    return 1
