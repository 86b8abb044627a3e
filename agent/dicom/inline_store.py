"""A C-STORE served on the association's network thread, where its last fragment arrives.

pynetdicom decodes PDUs on the association's network thread (DUL) and queues
each finished DIMSE message for the association's own thread, which runs the
service class and the handler; the handler's response is queued back for the
network thread to send. For a C-STORE that is two hand-offs between threads
per instance, each a wake-up and a turn at the GIL. A profile of four
associations on two cores put ~35% of the agent's CPU in the kernel's thread
switching and wake-ups (futexes: the GIL's hand-offs), and ~30 context switches
per instance on each of the two threads.

Here the network thread serves a C-STORE request itself, at the moment the
last fragment completes it: the storage service class and its handler run
there, and the response is queued to the same thread, which sends it on its
next loop. Nothing else changes: the service class is pynetdicom's (its
status checks, its 0xC211 for a handler that raises), the handler is the
SCP's, the bytes are the same. The network thread reads nothing more while
the handler runs; nor would it with the hand-off, since a sender waits for
the response before its next request.

Only a plain case is served here: an acceptor association, a valid C-STORE
request on an accepted presentation context, no release under way, the
storage service class, and the one C-STORE handler ``enable_inline_store``
was given bound (another handler may expect pynetdicom's thread). Anything
else (C-ECHO, another service, another handler) is queued for the
association's thread exactly as before. pynetdicom's own serving would abort
the association, blocking, if the service class raised; from the network
thread that would wait for itself, so here the abort is queued instead
(``block=False``, as pynetdicom does inside a handler).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from pynetdicom import _config, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

log = logging.getLogger(__name__)

_install_lock = threading.Lock()


class Counter:
    """C-STOREs served on the network thread (the tests read it)."""

    def __init__(self):
        self.served = 0


served = Counter()


def _service_class(assoc, request: C_STORE) -> type | None:
    """The service class pynetdicom's ``_serve_request`` would run for ``request``, if it is
    the storage service class."""
    class_uid = request.AffectedSOPClassUID
    if class_uid is None:
        return None
    class_uid = assoc.acceptor.accepted_common_extended.get(class_uid, (class_uid,))[0]
    if _config.UNRESTRICTED_STORAGE_SERVICE:
        class_uid = "1.2.840.10008.5.1.4.1.1.1"
    try:
        service = uid_to_service_class(class_uid)
    except Exception:  # an unknown UID: pynetdicom's path answers it
        return None
    return service if issubclass(service, StorageServiceClass) else None


def _only_handler(assoc, handler: Callable) -> bool:
    bound = assoc.get_handlers(evt.EVT_C_STORE)
    if not isinstance(bound, tuple) or not bound:  # (handler, args) or (handler, None)
        return False
    return getattr(bound[0], "__func__", bound[0]) is handler


def serve_inline(assoc, context_id: int, request, handler: Callable) -> bool:
    """Serve ``request`` now, on the calling (network) thread, if it is the plain case;
    False (nothing done) where it must be queued for the association's thread."""
    if not (
        type(request) is C_STORE
        and threading.current_thread() is assoc.dul
        and assoc.is_acceptor
        and not assoc._sent_release
        and request.is_valid_request
        and context_id in assoc._accepted_cx
        and _only_handler(assoc, handler)
    ):
        return False
    service = _service_class(assoc, request)
    if service is None:
        return False
    assoc.dimse.cancel_req = {}
    try:
        service(assoc).SCP(request, assoc._accepted_cx[context_id])
    except Exception:
        log.exception("storage service failed", extra={"event": "store_failed", "fields": {}})
        assoc.abort(block=False)
    finally:
        assoc.dimse.cancel_req = {}
    served.served += 1
    return True


class InlineStoreQueue(queue.Queue):
    """A DIMSE provider's message queue that serves the plain C-STORE request at once
    instead of queuing it (``serve_inline``); every other message is queued."""

    def __init__(self, dimse: DIMSEServiceProvider, handler: Callable):
        super().__init__()
        self._dimse = dimse
        self._handler = handler

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        if not serve_inline(self._dimse.assoc, context_id, message, self._handler):
            super().put(item, block, timeout)


def enable_inline_store(handler: Callable) -> Callable[[], None]:
    """Serve plain C-STOREs whose only handler is ``handler`` (a function; bound methods of
    it count) on the network thread, for every association created from now on; returns
    the undo."""
    with _install_lock:
        before = DIMSEServiceProvider.__init__

        def init(self, assoc) -> None:
            before(self, assoc)
            self.msg_queue = InlineStoreQueue(self, handler)

        init.__wrapped__ = before
        DIMSEServiceProvider.__init__ = init

    def undo() -> None:
        with _install_lock:
            if DIMSEServiceProvider.__init__ is init:
                DIMSEServiceProvider.__init__ = before

    return undo
