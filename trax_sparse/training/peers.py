"""Multi-host fault watch: every process stops soon after a peer dies or stops answering.

jax.distributed notices a lost process only after its heartbeat timeout (100 s), then
aborts with a C++ stack dump, and a collective on a dead peer can block for good. So the
trainer runs this watch of its own beside it: process 0 listens on the coordinator's host
at the coordinator's port + 1, every other process connects and the two sides exchange a
heartbeat every second over TCP. A peer whose connection closes (it died: the kernel closes
its sockets) or that sends nothing for `timeout` seconds (stopped, hung, cut off) is lost:
process 0 tells every other process which one, and each survivor calls `on_lost(process,
reason)`, which reports and ends the process (the trainer: one line, status 1). A process
that finishes says so (`stop()`), so the end of a run is not a loss.

`note_checkpoint` records the newest checkpoint (the Loop calls it) for that message.

Example:
    >>> watch = PeerWatch('127.0.0.1:0', 1, 0, timeout=5, on_lost=print)
    >>> watch.start(); watch.stop()       # one process: nothing to watch
"""
import socket
import threading
import time
from typing import Callable

HEARTBEAT_SECONDS = 1.0
_last_checkpoint: dict = {'step': None, 'path': None}


def note_checkpoint(step: int, path: str | None) -> None:
    """Records the newest checkpoint saved or restored (path None on processes other than 0)."""
    _last_checkpoint.update(step=int(step), path=path)


def last_checkpoint_text() -> str:
    """'the last checkpoint is PATH (step N)', or that there is none yet."""
    step, path = _last_checkpoint['step'], _last_checkpoint['path']
    if step is None:
        return 'no checkpoint was written by this run'
    where = path if path else "in process 0's output_dir"
    return f'the last checkpoint is step {step} ({where})'


def watch_address(coordinator_address: str) -> tuple[str, int]:
    """(host, port + 1) of a 'host:port' coordinator address."""
    host, _, port = coordinator_address.rpartition(':')
    return host.strip('[]') or '127.0.0.1', int(port) + 1


class PeerWatch:
    """The watch of one process (see the module docstring); threads are daemons."""

    def __init__(self, coordinator_address: str, num_processes: int, process_id: int,
                 timeout: float, on_lost: Callable[[int, str], None]):
        self.address = watch_address(coordinator_address)
        self.n, self.me, self.timeout = int(num_processes), int(process_id), float(timeout)
        self._on_lost = on_lost
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._peers: dict[int, socket.socket] = {}   # process 0: the connection of each peer
        self._seen: dict[int, float] = {}            # process 0: last heartbeat of each peer
        self._done: set[int] = set()                 # peers that finished
        self._server: socket.socket | None = None
        self._conn: socket.socket | None = None      # other processes: the link to process 0
        self._lost = False
        self._lost_event = threading.Event()

    # ---- both sides -------------------------------------------------------------------------
    def start(self) -> None:
        """Starts watching (call after jax.distributed.initialize: every process is up)."""
        if self.n <= 1:
            return
        if self.me == 0:
            self._server = socket.create_server(('', self.address[1]), reuse_port=False)
            self._server.settimeout(1.0)
            self._spawn(self._accept)
            self._spawn(self._check_peers)
        else:
            self._conn = self._connect()
            self._send(self._conn, f'hello {self.me}')
            self._spawn(self._beat_to_coordinator)
            self._spawn(self._read_coordinator)

    def stop(self) -> None:
        """This process finished: tell the others, stop the threads (not a loss)."""
        if self.n <= 1 or self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            links = list(self._peers.values()) + ([self._conn] if self._conn else [])
        for link in links:
            self._send(link, 'bye')
            link.close()
        if self._server is not None:
            self._server.close()

    def wait_for_loss(self, seconds: float) -> bool:
        """Waits up to `seconds` for a lost peer (a collective failed: was a peer lost?);
        True when one was (on_lost has then been called)."""
        if self.n <= 1:
            return False
        lost = self._lost_event.wait(seconds)
        time.sleep(0.5 if lost else 0)   # on_lost runs in the watch's thread
        return lost

    def _spawn(self, target: Callable[[], None]) -> None:
        threading.Thread(target=target, daemon=True, name=f'peer-watch-{target.__name__}').start()

    @staticmethod
    def _send(link: socket.socket, line: str) -> bool:
        try:
            link.sendall((line + '\n').encode())
            return True
        except OSError:
            return False

    def _lose(self, process: int, reason: str) -> None:
        with self._lock:
            if self._lost or self._stopping.is_set():
                return
            self._lost = True
            self._lost_event.set()
            peers = [(i, link) for i, link in self._peers.items() if i != process]
        for _, link in peers:   # process 0 tells the others which process was lost
            self._send(link, f'lost {process} {reason}')
        self._on_lost(process, reason)

    def _lines(self, link: socket.socket):
        """The lines received on `link`; ends on EOF, an error or `timeout` s of silence."""
        link.settimeout(self.timeout)
        buffer = b''
        while True:
            try:
                chunk = link.recv(4096)
            except socket.timeout:
                yield None   # silence
                return
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b'\n' in buffer:
                line, buffer = buffer.split(b'\n', 1)
                yield line.decode(errors='replace')

    # ---- process 0 --------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                link, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._spawn(lambda link=link: self._read_peer(link))

    def _read_peer(self, link: socket.socket) -> None:
        process = None
        silent = False
        for line in self._lines(link):
            if line is None:
                silent = True
                break
            words = line.split()
            if words[:1] == ['hello'] and len(words) == 2:
                process = int(words[1])
                with self._lock:
                    self._peers[process] = link
                    self._seen[process] = time.monotonic()
            elif words == ['bye'] and process is not None:
                self._done.add(process)
                return
            elif process is not None:
                self._seen[process] = time.monotonic()
        if process is not None and process not in self._done:
            self._lose(process, f'stopped answering for {self.timeout:.0f} s' if silent
                       else 'exited or was killed')

    def _check_peers(self) -> None:
        """Beats to every peer; a peer that never connects within `timeout` is lost too."""
        started = time.monotonic()
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            with self._lock:
                peers = list(self._peers.items())
            for _, link in peers:
                self._send(link, 'beat')
            missing = set(range(1, self.n)) - set(self._seen) - self._done
            if missing and time.monotonic() - started > self.timeout:
                self._lose(min(missing), f'never connected within {self.timeout:.0f} s')

    # ---- the other processes ----------------------------------------------------------------
    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return socket.create_connection(self.address, timeout=HEARTBEAT_SECONDS)
            except OSError:
                if time.monotonic() > deadline:
                    self._on_lost(0, f'its watch at {self.address[0]}:{self.address[1]} did '
                                     f'not answer within {self.timeout:.0f} s')
                    raise
                time.sleep(0.2)

    def _beat_to_coordinator(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            if not self._send(self._conn, 'beat'):
                return

    def _read_coordinator(self) -> None:
        silent = False
        for line in self._lines(self._conn):
            if line is None:
                silent = True
                break
            words = line.split()
            if words[:1] == ['lost'] and len(words) >= 2:
                self._lose(int(words[1]), ' '.join(words[2:]))
                return
            if words == ['bye']:
                return
        if not self._stopping.is_set():
            self._lose(0, f'stopped answering for {self.timeout:.0f} s' if silent
                       else 'exited or was killed')


__all__ = ['PeerWatch', 'last_checkpoint_text', 'note_checkpoint', 'watch_address']
