"""Working folders that are renamed into place once complete (the synthetic datasets, the pretrained
weights). Each is named after the machine and the process that owns it, so that the next start
removes those whose process is gone (a killed run) and says so, while the folders of live runs
and of other machines sharing the file system are left alone."""
import os
import re
import shutil
import socket
import tempfile
import time

__all__ = ["make_work_folder", "remove_leftover_work_folders"]

# tempfile's random part: 8 characters of [a-z0-9_].
_RANDOM = r"[a-z0-9_]{8}"
# Folders named before the owner was part of the name have no process to ask: they are left over
# once nothing in them changed for this long (a live run writes its log every few seconds).
UNOWNED_IDLE_SECONDS = 3600


def _machine():
    """This machine as process ids see it: its host name and, on Linux, its pid namespace
    (containers sharing a host name, e.g. with the host's network, count as other machines)."""
    try:
        return f"{socket.gethostname()}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


def make_work_folder(parent, prefix):
    """A new, empty folder in `parent`: `prefix`, this machine, this process id, a random part."""
    return tempfile.mkdtemp(prefix=f"{prefix}{_machine()}-{os.getpid()}-", dir=parent)


def _process_runs(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _newest_change(folder):
    newest = os.path.getmtime(folder)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.path.getmtime(os.path.join(root, name)))
            except OSError:  # removed meanwhile
                pass
    return newest


def remove_leftover_work_folders(parent, prefix, report, now=None):
    """Remove the folders `make_work_folder(parent, prefix)` made for processes of this machine
    that no longer run, and unowned ones (older names) idle for UNOWNED_IDLE_SECONDS; one
    sentence, passed to `report` (e.g. a logger's info), names them. Returns the removed paths."""
    if not os.path.isdir(parent):
        return []
    owned = re.compile(rf"{re.escape(prefix)}(?P<host>.+)-(?P<pid>\d+)-{_RANDOM}")
    unowned = re.compile(rf"{re.escape(prefix)}{_RANDOM}")
    host, now = _machine(), time.time() if now is None else now
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not os.path.isdir(path):
            continue
        match = owned.fullmatch(name)
        if match:
            left = match["host"] == host and not _process_runs(int(match["pid"]))
        else:
            left = bool(unowned.fullmatch(name)) and \
                now - _newest_change(path) > UNOWNED_IDLE_SECONDS
        if left:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        report(f"Removed {len(removed)} working folder{'s' * (len(removed) > 1)} left by "
                    f"stopped runs: {', '.join(removed)}")
    return removed
