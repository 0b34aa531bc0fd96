"""A loopback TCP proxy between a worker (which connects) and its controller (bound) that loses what a connection
carries as a connection ZeroMQ re-makes by itself does, in two ways a test picks:

- ``drop_tokens(n)``: the next n ``Tokens`` messages the worker sends vanish, the connection staying up. It reads
  the ZMTP 3 stream towards the controller (the 64-byte greeting, then frames: a flags byte, a 1- or 8-byte size,
  the body) to drop whole messages; that is what the controller sees after a reconnection it was not told of.
- ``cut_worker_side(pause_s)``: the live connection is closed on the worker's side only (the controller's end
  stays open, as a half-open TCP connection's does), and the worker's next connection is put through only after
  ``pause_s``: the worker's sends meanwhile fail (it connects with ZMQ_IMMEDIATE), so it gives the controller up
  and says Hello again on the new connection, which takes its routing id over (ROUTER_HANDOVER).

Not a test module."""

from __future__ import annotations

import socket
import threading
import time

from warmserve import protocol as P

_GREETING_BYTES = 64


class WorkerLinkProxy:
    def __init__(self, controller_port: int):
        self.controller_port = controller_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        #: Connections accepted so far (a reconnection makes one more).
        self.accepted = 0
        #: Tokens messages dropped so far.
        self.dropped = 0
        self._to_drop = 0
        self._paused_until = 0.0
        #: Per connection: [worker side, controller side].
        self._conns: list[list[socket.socket]] = []
        self._lock = threading.Condition()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    # ------------------------------------------------------------------ what a test does

    def drop_tokens(self, n: int = 1) -> None:
        with self._lock:
            self._to_drop += n

    def wait_dropped(self, n: int, within_s: float) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: self.dropped >= n, within_s), f"{self.dropped} of {n} Tokens dropped"

    def cut_worker_side(self, pause_s: float) -> None:
        with self._lock:
            self._paused_until = time.monotonic() + pause_s
            down = self._conns[-1][0]
        try:
            down.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        down.close()

    def wait_accepted(self, n: int, within_s: float) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: self.accepted >= n, within_s), "the worker never reconnected"

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (a close alone may not)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns = [s for pair in self._conns for s in pair]
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> "WorkerLinkProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the pumps

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
                with self._lock:
                    wait_s = self._paused_until - time.monotonic()
                if wait_s > 0:  # the worker's ZMTP handshake waits: no connection of its is usable meanwhile
                    time.sleep(wait_s)
                up = socket.create_connection(("127.0.0.1", self.controller_port))
            except OSError:  # closed: the test is over
                return
            with self._lock:
                self._conns.append([down, up])
                self.accepted += 1
                self._lock.notify_all()
            threading.Thread(target=self._to_controller, args=(down, up), daemon=True).start()
            threading.Thread(target=self._to_worker, args=(up, down), daemon=True).start()

    @staticmethod
    def _to_worker(up: socket.socket, down: socket.socket) -> None:
        # Ends when the worker's side is cut; the controller's side is left open (closed by close()).
        try:
            while data := up.recv(65536):
                down.sendall(data)
        except OSError:
            pass

    def _to_controller(self, down: socket.socket, up: socket.socket) -> None:
        greeting_left = _GREETING_BYTES
        buf = b""
        frames: list[bytes] = []  # the frames of the message being read (the last one has no MORE flag)
        try:
            while data := down.recv(65536):
                if greeting_left:  # passed on as it comes: each side sends part of it, then waits for the other's
                    head, data = data[:greeting_left], data[greeting_left:]
                    greeting_left -= len(head)
                    up.sendall(head)
                buf += data
                while (frame := _next_frame(buf)) is not None:
                    buf = buf[len(frame):]
                    flags = frame[0]
                    if flags & 0x04:  # a command (READY, PING): not a message
                        up.sendall(frame)
                        continue
                    frames.append(frame)
                    if flags & 0x01:  # MORE
                        continue
                    message, frames = frames, []
                    if not self._dropped(message[-1]):
                        up.sendall(b"".join(message))
        except OSError:
            pass

    def _dropped(self, frame: bytes) -> bool:
        with self._lock:
            if not self._to_drop:
                return False
        body = frame[9:] if frame[0] & 0x02 else frame[2:]
        try:
            msg = P.decode_reply(body)
        except Exception:
            return False
        if not isinstance(msg, P.Tokens) or msg.finished:  # a final one would end the stream unseen
            return False
        with self._lock:
            self._to_drop -= 1
            self.dropped += 1
            self._lock.notify_all()
        return True


def _next_frame(buf: bytes) -> bytes | None:
    """The first whole ZMTP 3 frame in ``buf`` (header and body), or None while it is incomplete."""
    if len(buf) < 2:
        return None
    if buf[0] & 0x02:  # LONG: an 8-byte size
        if len(buf) < 9:
            return None
        end = 9 + int.from_bytes(buf[1:9], "big")
    else:
        end = 2 + buf[1]
    return buf[:end] if len(buf) >= end else None
