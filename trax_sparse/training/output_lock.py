"""One trainer per output dir: `OUTPUT_DIR/trainer.lock`, held with flock while training.

The file names its holder (`pid host`). A second trainer on the same dir gets
OutputDirLockedError naming that pid and host. A lock left by a trainer that is gone (the
kernel drops flock with the process; or its pid no longer runs on this host) is taken over
with a log note. Released (emptied, not deleted) by `release()` or at process exit.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> lock = OutputLock(d); lock.acquire()
    >>> try:
    ...     OutputLock(d).acquire()
    ... except OutputDirLockedError as e:
    ...     'is in use by the trainer with pid' in str(e)
    True
    >>> lock.release()
"""
import fcntl
import logging
import os
import socket

log = logging.getLogger('trax_sparse.training')
LOCK_FILE = 'trainer.lock'


class OutputDirLockedError(ValueError):
    """Another trainer holds the output dir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists (another user's)
    return True


class OutputLock:
    """The lock of one output dir (see the module docstring)."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._fd: int | None = None

    def _holder(self) -> tuple[int, str] | None:
        try:
            with open(self.path, encoding='utf-8') as f:
                pid, host = f.read().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Takes the lock or raises OutputDirLockedError naming the holder's pid and host."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = self._holder()
            who = f'pid {holder[0]} on host {holder[1]}' if holder else 'another process'
            raise OutputDirLockedError(
                f'output_dir {os.path.dirname(self.path)} is in use by the trainer with {who} '
                f'(it holds {self.path}); wait for it to finish, stop it, or choose another '
                f'--output_dir') from None
        holder, here = self._holder(), socket.gethostname()
        if holder is not None and holder[0] != os.getpid():
            pid, host = holder   # its flock is gone: that trainer ended without releasing
            state = ('no longer running' if not _pid_alive(pid) else 'not holding it') \
                if host == here else 'not holding it'
            log.warning('taking over the stale lock %s of pid %d on host %s (%s)', self.path,
                        pid, host, state)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()} {here}\n'.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)   # closing drops the flock
            self._fd = None

    def __enter__(self) -> 'OutputLock':
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ['LOCK_FILE', 'OutputDirLockedError', 'OutputLock']
