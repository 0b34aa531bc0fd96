"""The argument checks of `warmserve.Cluster` (controller/cluster.py), each refusal an InvalidArgumentError naming
its parameter; a module of their own to keep cluster.py within its size."""

from __future__ import annotations

import math
import numbers
import os
import sys

from warmserve.config import ControllerConfig
from warmserve.errors import InvalidArgumentError

def _check_prompt(prompt) -> None:
    """Found in review: bytes were taken as token ids (b"hello" as ids 104, 101, ...), and a number failed with a
    bare TypeError from len()."""
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError("prompt must be text or a list of token ids, not bytes: decode it first "
                                   "(prompt.decode())", param="prompt")
    np = sys.modules.get("numpy")  # an array can only come from a numpy that is imported already
    if np is not None and isinstance(prompt, np.ndarray):
        # The token ids frontend.prepare takes (found in review: refused here, though it takes them).
        if prompt.ndim != 1 or prompt.dtype.kind not in "iu":
            raise InvalidArgumentError(f"a numpy prompt must be a 1-D array of integer token ids, got shape "
                                       f"{prompt.shape} of {prompt.dtype}: pass ids.ravel().astype(int) or a "
                                       "list", param="prompt")
        return
    if prompt is not None and not isinstance(prompt, (str, list, tuple)):
        raise InvalidArgumentError(f"prompt must be text or a list of token ids, got {type(prompt).__name__} "
                                   f"{prompt!r:.40}", param="prompt")


#: Waits longer than this have no limit: threading's waits overflow long before (found in review:
#: generate(timeout_s=1e12) raised OverflowError, and inf too, after the request had gone out).
LONGEST_WAIT_S = 365 * 86400.0


def _wait_limit_s(timeout_s: float | None) -> float | None:
    return None if timeout_s is None or timeout_s >= LONGEST_WAIT_S else max(0.0, timeout_s)


def _check_timeout(timeout_s) -> float | None:
    """A caller's timeout_s as seconds, None for no limit (None or inf). Found in review: nan timed out at once
    and inf raised OverflowError."""
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real):
        raise InvalidArgumentError(f"timeout_s must be a number of seconds or None (no limit), got "
                                   f"{type(timeout_s).__name__} {timeout_s!r:.40}", param="timeout_s")
    try:
        t = float(timeout_s)
    except OverflowError:  # an int beyond a float's range
        t = math.inf if timeout_s > 0 else -math.inf
    if not t > 0:
        raise InvalidArgumentError(f"timeout_s must be above 0 seconds, got {timeout_s!r:.40}: pass None or "
                                   f"math.inf for no limit", param="timeout_s")
    return None if t == math.inf else t


def _check_sampling(k: dict) -> None:
    """The keywords' types, named (found in review: temperature="hot" and seed="1" failed with bare errors)."""
    for name in ("temperature", "top_p"):
        v = k[name]
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InvalidArgumentError(f"{name} must be a number, got {type(v).__name__} {v!r:.40}", param=name)
    for name in ("max_tokens", "seed"):
        v = k[name]
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
            raise InvalidArgumentError(f"{name} must be a whole number, got {type(v).__name__} {v!r:.40}",
                                       param=name)
        if v is not None:
            k[name] = int(v)



def _check_devices(devices) -> None:
    """Found in review: devices=5 was a bare TypeError, and b"cpu:0" was taken byte by byte ("device 99")."""
    if devices is None or isinstance(devices, str):
        return
    if not isinstance(devices, (list, tuple)) or not all(isinstance(d, str) for d in devices):
        raise InvalidArgumentError(f"devices must be a device name such as 'cuda:0' or 'cpu:0', or a list or tuple "
                                   f"of them, or None (one worker per GPU, else cpu_workers CPU workers); got "
                                   f"{type(devices).__name__} {devices!r:.60}", param="devices")


def _check_paths(log_dir, ray_address) -> None:
    """Found in review: log_dir=5 and ray_address=5 failed with bare TypeErrors, deep in the start."""
    if log_dir is not None and (not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir)):
        raise InvalidArgumentError(f"log_dir must be a directory path (str or os.PathLike) or None (workers log to "
                                   f"this process's stderr), got {type(log_dir).__name__} {log_dir!r:.60}",
                                   param="log_dir")
    if ray_address is not None and not isinstance(ray_address, str):
        raise InvalidArgumentError(f"ray_address must be a Ray cluster's address (str, 'auto': the one this machine "
                                   f"belongs to) or None (local workers), got {type(ray_address).__name__} "
                                   f"{ray_address!r:.60}", param="ray_address")


def _check_bind(cc: ControllerConfig) -> None:
    """The worker socket's bind rule, before anything starts, with the fix named in this API's terms (found in
    review: the hub's names the command line's --curve-dir and --insecure). ``insecure`` is left to the hub, which
    warns of it."""
    from warmserve.security import require_authenticated_bind

    if not cc.insecure and cc.bind:  # "": the private socket, this user's alone
        require_authenticated_bind(
            cc.bind, authenticated=bool(cc.curve_dir), insecure=False,
            who=f"the controller's worker socket (bind={cc.bind!r})",
            fix="pass curve_dir=DIR (holding server.key_secret, and the workers' public keys in DIR/workers)",
            loopback="bind a loopback address (bind='tcp://127.0.0.1:0')", trust="pass insecure=True")
