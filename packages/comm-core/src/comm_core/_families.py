"""The serializer families of the process-wide registry, as comms are handed them.

The wire protocol (:mod:`comm_core.protocol`) never looks families up: a comm
hands its encoder and decoder those of its :class:`~comm_core.Options`, and if
none were given, the mapping here, which asks the registry on each use (so
that nothing is loaded before a custom value is first written or read, and a
family registered later is seen).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from comm_core._registry import get_registry

if TYPE_CHECKING:
    from comm_core.protocol import SerializerFamily

__all__ = ["REGISTERED_FAMILIES", "serializer_families"]


def serializer_families() -> Mapping[str, SerializerFamily]:
    """Every serializer family known: comm-core's ``pickle`` plus those plugins register.

    Plugins add families with the ``comm_register_serializers`` hook. Comms
    are handed them (see :attr:`Options.families <comm_core.Options>`); the
    wire protocol never looks them up.

    Raises:
        BackendConflictError: two plugins register families with one name.
        PluginError: a plugin failed to load.
    """
    return get_registry().serializer_families()


class _RegisteredFamilies(Mapping[str, "SerializerFamily"]):
    """A read-only mapping that is :func:`serializer_families` each time it is read."""

    __slots__ = ()

    def __getitem__(self, name: str) -> SerializerFamily:
        return serializer_families()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(serializer_families())

    def __len__(self) -> int:
        return len(serializer_families())

    def __repr__(self) -> str:
        return "<the serializer families of the process-wide registry>"


#: The registry's serializer families, looked up on each use: what a comm uses when
#: its options name none.
REGISTERED_FAMILIES: Mapping[str, SerializerFamily] = _RegisteredFamilies()
