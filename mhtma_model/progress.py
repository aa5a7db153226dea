"""Progress of the long loops (training steps, images, masks): a tqdm bar on a terminal, otherwise a few plain
lines, so that a redirected log holds about ten progress lines instead of one carriage-return update per step."""
from __future__ import annotations

import sys
from typing import Iterable, Optional

from tqdm import tqdm

#: Plain lines per run when the output is not a terminal (one each time another tenth of the total is done).
PLAIN_LINES = 10
#: Without a known total (training by epochs): one plain line every this many updates.
UNKNOWN_TOTAL_EVERY = 100


class PlainProgress:
    """The part of tqdm's interface the commands use, printing ``desc: n/total unit (postfix)`` each time
    another 1/:data:`PLAIN_LINES` of ``total`` is done, and at :meth:`close`."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", initial: int = 0, file=None, disable: bool = False):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.file, self.postfix = total, initial, file, ""
        self.every = max(1, total // PLAIN_LINES) if total else UNKNOWN_TOTAL_EVERY
        self.printed = initial

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self.printed >= self.every:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.n != self.printed:
            self._line()

    def _line(self) -> None:
        self.printed = self.n
        if self.disable:
            return
        out = self.file or sys.stderr
        total = f"/{self.total}" if self.total else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}" + (f" ({self.postfix})" if self.postfix else ""),
              file=out, flush=True)

    @staticmethod
    def write(message: str, file=None) -> None:
        print(message, file=file or sys.stderr, flush=True)


def progress(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
             initial: int = 0, file=None, disable: bool = False, **bar_options):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`PlainProgress`; ``bar_options``
    go to tqdm only."""
    out = file or sys.stderr
    if hasattr(out, "isatty") and out.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=out, disable=disable,
                    **bar_options)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=out, disable=disable)


__all__ = ["progress", "PlainProgress", "PLAIN_LINES", "UNKNOWN_TOTAL_EVERY"]
