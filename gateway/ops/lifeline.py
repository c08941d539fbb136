"""A process `serve` started dies with it. A supervisor killed by SIGKILL (or the OOM killer) runs no
cleanup: its gateway processes kept serving on the port (SO_REUSEPORT let a restarted serve add its own
beside them: four on the port) and its worker and redis-server kept running.

Two mechanisms, in the child, as soon as it starts:
- Linux: prctl(PR_SET_PDEATHSIG, SIGTERM): the kernel sends SIGTERM when the supervisor's thread that
  started the child ends (serve starts every child from its main thread, which lives as long as it does);
  SIGTERM is the clean stop (health NOT_SERVING, in-flight calls finish, the worker ends its batch).
- everywhere: a thread that checks every PARENT_CHECK_INTERVAL_S that the parent is still the supervisor
  (an orphan is re-parented) and sends the same SIGTERM; it also covers a supervisor that died before
  the prctl call.
If the clean stop has not ended the process ORPHAN_EXIT_GRACE_S later, it exits hard."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

SUPERVISOR_ENV = "MEDSETTLE_SUPERVISOR_PID"  # set by serve in its children's environment
PR_SET_PDEATHSIG = 1
PARENT_CHECK_INTERVAL_S = 1.0
ORPHAN_EXIT_GRACE_S = 20.0  # the clean stop takes the shutdown grace (5 s) and a batch; then exit hard

log = logging.getLogger(__name__)


def die_with_supervisor() -> int | None:
    """In a child of serve (SUPERVISOR_ENV set): arrange to stop when the supervisor dies. Returns the
    supervisor's pid, or None outside serve."""
    expected = os.environ.get(SUPERVISOR_ENV)
    if not expected:
        return None
    parent = int(expected)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError) as exc:  # no libc prctl: the watch below still works
            log.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    threading.Thread(target=watch, args=(parent,), name="supervisor-watch", daemon=True).start()
    return parent


def watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_INTERVAL_S)
    log.warning("the serve supervisor (pid %d) is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_EXIT_GRACE_S)
    os._exit(1)
