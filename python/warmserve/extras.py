"""Optional libraries: plots and progress bars, used by the benchmarks and by `warmserve simulate --plot`.

They come with the ``bench`` extra (``pip install 'warmserve[bench]'``), not with the serving install. Import them
through ``require`` so that a missing one says which extra to install, or use ``progress_bar``, which simply
shows none without tqdm.
"""

from __future__ import annotations

import importlib
import sys

from warmserve.errors import WarmServeError, register


@register
class MissingExtraError(WarmServeError, ImportError):
    """An optional library is not installed."""


def require(module: str, purpose: str, extra: str = "bench"):
    """``module`` imported, or MissingExtraError naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: pip install 'warmserve[{extra}]'",
            module=module, extra=extra) from None


#: Seconds between the lines a progress bar writes where stderr is no terminal (a log file, a pipe, a batch job's
#: output): tqdm writes a whole line at each refresh there, ten a second by default (found in review: a 6-second
#: `simulate` of two seeds wrote 75 lines into its log, so a sweep of minutes would write thousands).
LOG_PROGRESS_INTERVAL_S = 30.0


def progress_bar(enabled: bool = True, **tqdm_kwargs):
    """A tqdm bar on stderr, or None when disabled or when tqdm is not installed (progress is only a nicety). Where
    stderr is no terminal, a line at most every ``LOG_PROGRESS_INTERVAL_S``."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    isatty = getattr(sys.stderr, "isatty", None)
    if not (isatty is not None and isatty()):
        tqdm_kwargs.setdefault("mininterval", LOG_PROGRESS_INTERVAL_S)
    return tqdm(file=sys.stderr, **tqdm_kwargs)


def pyplot(purpose: str):
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    matplotlib = require("matplotlib", purpose)
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", purpose)


__all__ = ["MissingExtraError", "require", "progress_bar", "pyplot"]
