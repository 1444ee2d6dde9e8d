"""Logging for workflow jobs: everything a job prints goes to its rule's log file; progress of long loops."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def log_to(path: str | os.PathLike | None) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr (tqdm, warnings) to `path` for the block; errors are logged too."""
    logger = logging.getLogger("vislib")
    if not path:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        yield logger
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield logger
        except Exception:
            logger.exception("job failed")
            raise
        finally:
            root.removeHandler(handler)
            sys.stderr.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")


class Progress:
    """Logs how far a long loop is: done/total, the rate and the time left, at most every `interval` seconds.

    The default interval is 5 s on a terminal and 60 s otherwise (a job's log file), so a job log gains about a
    line a minute however fast the loop runs; the last step is always logged.
    """

    def __init__(self, total: int, what: str, unit: str = "images", interval: float | None = None,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.what, self.unit = total, what, unit
        self.interval = interval if interval is not None else (5.0 if sys.stderr.isatty() else 60.0)
        self.logger = logger or logging.getLogger("vislib.progress")
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0

    def update(self, count: int = 1) -> None:
        """Count `count` more units done; log a line if the interval has passed or the loop is finished."""
        self.done += count
        now = self.clock()
        if now - self.last < self.interval and self.done < self.total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.logger.info("%s: %d/%d %s (%.0f%%), %.3g %s/s, %s elapsed, %s left", self.what, self.done, self.total,
                         self.unit, 100 * self.done / max(self.total, 1), rate, self.unit, _duration(elapsed),
                         _duration(left) if left != float("inf") else "unknown")
