"""The controller's worker socket's CURVE set-up and its tear-down (``WorkerHub``'s, in ``workers.py``): module-level
functions holding no reference to the hub, so that a hub dropped without close() is still collected and cleaned up."""

from __future__ import annotations

import os

import zmq
import zmq.auth

from warmserve.endpoints import remove_ipc_file
from warmserve.errors import InvalidArgumentError
from warmserve.security import curve_server, load_curve_key


def release_curve(auth, curve_tmp: str | None) -> None:
    if auth is not None:
        auth.stop()
    if curve_tmp is not None:
        import shutil

        shutil.rmtree(curve_tmp, ignore_errors=True)


def finalize_hub(sock, ctx, auth, curve_tmp: str | None, bound: str) -> None:
    """A hub's close: the authenticator first, since ctx.term() waits for every socket of the context, its own
    among them."""
    release_curve(auth, curve_tmp)
    close_sock(sock, ctx, bound)


def close_sock(sock, ctx, bound: str | None = None) -> None:
    sock.close(0)
    ctx.term()
    remove_ipc_file(bound)  # ZeroMQ leaves an ipc:// socket's file behind (found in review)


def curve_server_of(ctx, sock, curve_dir: str):
    """CURVE on the ROUTER: the controller's secret key from curve_dir/server.key_secret, and only workers whose
    public keys sit in curve_dir/workers/ (read now) are let in (ZAP), plus a key pair made now for the local workers
    this controller spawns. Returns (authenticator, local worker's secret cert, the server's public cert, temp dir):
    both certs in the temp dir. The public one is written from server.key_secret, not taken from curve_dir/server.key,
    which may be missing or left from an older pair (found in review: the local workers then failed the handshake,
    unwarned)."""
    import shutil
    import tempfile

    secret = os.path.join(curve_dir, "server.key_secret")
    if not os.path.isfile(secret):  # typed, as a malformed one is (found in review: a bare FileNotFoundError)
        raise InvalidArgumentError(
            f"CURVE is on but {secret} is missing: create keys with `python -c \"import zmq.auth; "
            f"zmq.auth.create_certificates('{curve_dir}', 'server')\"` and put workers' public keys in "
            f"{curve_dir}/workers", path=secret)
    public, secret_key = load_curve_key(secret, secret=True, what="--curve-dir's server key")
    tmp = tempfile.mkdtemp(prefix="warmserve-curve-")  # mode 0700: the local workers' secret key is in it
    try:
        local_pub, local_secret = zmq.auth.create_certificates(tmp, "local")
        os.chmod(local_secret, 0o600)  # written under the umask; the local workers warn of a key others can read
        server_public = os.path.join(tmp, "server.key")
        with open(server_public, "w") as f:
            f.write(f'metadata\ncurve\n    public-key = "{public.decode("ascii")}"\n')
        auth = curve_server(ctx, sock, public, secret_key, os.path.join(curve_dir, "workers"),
                            extra_keys=[zmq.auth.load_certificate(local_pub)[0]],
                            what=f"worker certificate (--curve-dir {curve_dir}/workers)")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # it holds a secret key made just now
        raise
    return auth, local_secret, server_public, tmp

