"""Who holds a claim: ``host:pid:nonce`` owner ids, and whether such an owner is gone.

``host`` is the hostname and, where Linux tells it, the pid namespace
(``name/4026531836``): two containers that share a hostname (``--network host``, or one
set by hand) have their own pids, and a pid of one means nothing in the other; so a
claim's owner is judged gone only by a process of the same hostname *and* pid namespace.
The price: a restarted container (a new pid namespace) no longer sees its predecessor's
claims as its own; they last their lease (5 minutes for a watch slot, the alert claim
lease for a delivery). Waiting beats the alternative, two live workers voiding each
other's claims and sending or scanning twice.

Owns: the owner id a claim row carries (alert_claims, watch_claims) and the one liveness
test both use. Must not touch: the store.
"""

from __future__ import annotations

import os
import socket
import uuid

from schemas.bounded import is_digits

# The first half of every nonce this process mints: an owner with this process's pid
# and another tag was a process before it with the same pid (a restarted container's
# PID 1, on the same hostname), gone.
_PROCESS_TAG = uuid.uuid4().hex[:6]


def _pid_namespace() -> str:
    """This process's pid namespace (the inode of ``/proc/self/ns/pid``), "" where the
    system does not say."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


_PID_NAMESPACE = _pid_namespace()


def this_host() -> str:
    """The ``host`` part of this process's owner ids: hostname and pid namespace."""
    name = socket.gethostname()
    return f"{name}/{_PID_NAMESPACE}" if _PID_NAMESPACE else name


def owner_id(host: str | None = None) -> str:
    """A new owner id for this process (one per claimant: a pass, a watcher)."""
    return f"{host or this_host()}:{os.getpid()}:{_PROCESS_TAG}{uuid.uuid4().hex[:6]}"


def owner_is_gone(owner: str, host: str | None = None) -> bool:
    """True when ``owner`` (``host:pid:nonce``) ran in this pid namespace of this host in
    a process that no longer exists: its claim is void at once, not after a lease (a
    restart after a SIGKILL in the same namespace goes on without waiting; a process with
    a reused pid has another nonce). An owner of another host, or of another pid
    namespace on this one (a restarted container, a neighbour sharing the hostname, or an
    id from before namespaces were part of it), is never known gone: its claim lasts its
    lease."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != (host or this_host()) or not is_digits(parts[1]):
        return False
    pid = int(parts[1])
    if pid == os.getpid():  # this process, or one before it with its pid (a container)
        return not parts[2].startswith(_PROCESS_TAG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # exists, owned by another user
    return False
