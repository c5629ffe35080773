"""Options: the settings a comm, a connector or a listener works with, resolved once.

:func:`comm_core.connect` and :func:`comm_core.listen` read the settings once
(with their own arguments over them) into an :class:`Options` and pass it
down: to the connector (``options=``), to the listener (through its
:class:`~comm_core.session.ServerSession`), to each comm, and from a comm to
its encoder and decoder. Nothing below them reads a setting again.

A leaf: it imports nothing heavy (no asyncio, no msgpack) and asks no registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from comm_core._config import get_setting
from comm_core._record import Record

if TYPE_CHECKING:
    from comm_core.protocol import SerializerFamily

__all__ = ["Options"]


#: The fields of an Options, in order, and the setting each one defaults to.
_FIELDS = (
    "connect_timeout",
    "handshake_timeout",
    "max_pending_handshakes",
    "retry_delay_min",
    "retry_delay_max",
    "require_encryption",
    "max_message_size",
    "max_message_depth",
    "max_message_expansion",
)


class Options(Record):
    """The settings one comm, connector or listener works with, resolved once.

    Each field left out (or ``None``) takes the value of the setting of the
    same name in force when the object is made (see :doc:`configuration`);
    after that nothing changes it. :func:`comm_core.connect` and
    :func:`comm_core.listen` make one (their own arguments, such as
    ``handshake_timeout=``, win over the settings) and pass it down; pass
    ``options=`` to them to use one of your own. A transport passes the one it
    was given to the comms it makes (:class:`~comm_core.stream.StreamComm`
    takes ``options=``).

    Immutable, and compared by value; :meth:`replace` makes a changed copy.

    Args:
        connect_timeout: total time budget of ``connect()``, in seconds.
        handshake_timeout: seconds a new comm has to complete the comm
            handshake (and, over tls, the TLS handshake before it).
        max_pending_handshakes: most connections a listener keeps before
            their handshake is done.
        retry_delay_min: base delay of ``connect()``'s backoff, in seconds.
        retry_delay_max: longest delay between two attempts, in seconds.
        require_encryption: refuse backends that do not encrypt.
        max_message_size: largest message sent or accepted, in bytes.
        max_message_depth: deepest nesting a received message may have.
        max_message_expansion: most memory a received body may decode to, as
            a multiple of its size.
        families: the serializer families by name; default (``None``): those
            of the process-wide registry (comm-core's ``pickle`` and those
            plugins register, :func:`comm_core.serializer_families`), which a
            comm looks up when it first needs them.
        same_host: a listener offers, and a dialer takes, a faster path to a
            listener on the same host (a Unix socket; see :doc:`paths`).
        same_process: with *same_host*, a dialer in the listener's own
            process takes inproc (messages shared, not serialized: off by
            default, since that is not transparent).

    Raises:
        ValueError: *max_pending_handshakes* is below 1, or a setting left
            out has a malformed environment value (naming the variable).
    """

    __slots__ = (*_FIELDS, "families", "same_host", "same_process")

    connect_timeout: float
    handshake_timeout: float
    max_pending_handshakes: int
    retry_delay_min: float
    retry_delay_max: float
    require_encryption: bool
    max_message_size: int
    max_message_depth: int
    max_message_expansion: float
    families: Mapping[str, SerializerFamily] | None
    same_host: bool
    same_process: bool

    def __init__(
        self,
        connect_timeout: float | None = None,
        handshake_timeout: float | None = None,
        max_pending_handshakes: int | None = None,
        retry_delay_min: float | None = None,
        retry_delay_max: float | None = None,
        require_encryption: bool | None = None,
        max_message_size: int | None = None,
        max_message_depth: int | None = None,
        max_message_expansion: float | None = None,
        families: Mapping[str, SerializerFamily] | None = None,
        same_host: bool | None = None,
        same_process: bool | None = None,
    ) -> None:
        def setting(name: str, value: Any) -> Any:
            return get_setting(name) if value is None else value

        pending = int(setting("max_pending_handshakes", max_pending_handshakes))
        if pending < 1:
            raise ValueError(f"max_pending_handshakes must be at least 1, got {pending}")
        self._assign(
            connect_timeout=float(setting("connect_timeout", connect_timeout)),
            handshake_timeout=float(setting("handshake_timeout", handshake_timeout)),
            max_pending_handshakes=pending,
            retry_delay_min=float(setting("retry_delay_min", retry_delay_min)),
            retry_delay_max=float(setting("retry_delay_max", retry_delay_max)),
            require_encryption=bool(setting("require_encryption", require_encryption)),
            max_message_size=int(setting("max_message_size", max_message_size)),
            max_message_depth=int(setting("max_message_depth", max_message_depth)),
            max_message_expansion=float(setting("max_message_expansion", max_message_expansion)),
            families=families,
            same_host=bool(setting("same_host", same_host)),
            same_process=bool(setting("same_process", same_process)),
        )

    def replace(self, **changes: Any) -> Options:
        """A copy with the fields named in *changes* changed (``None`` keeps a field);
        this object itself if nothing changes.

        Raises:
            TypeError: a name in *changes* is not a field.
            ValueError: as the constructor.
        """
        unknown = changes.keys() - set(self._fields())
        if unknown:
            raise TypeError(f"Options has no field {', '.join(sorted(unknown))}")
        given = {name: value for name, value in changes.items() if value is not None}
        if not given:
            return self
        values = {name: getattr(self, name) for name in self._fields()}
        values.update(given)
        return Options(**values)
