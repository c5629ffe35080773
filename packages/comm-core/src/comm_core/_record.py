"""Record: the base of comm-core's small immutable value types.

They behave as frozen dataclasses do (fields in ``__slots__`` order, a repr
that shows them, equality and hashing by value, assignment refused, pickling
by value) but cost nothing to define: ``@dataclass`` writes and compiles
several methods per class when the module is imported, about a millisecond
each class, which every program that imports comm would pay at start-up.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["Record"]


class Record:
    """Immutable fields named by the subclass's ``__slots__``.

    A subclass declares ``__slots__`` (the fields, in the order of its
    ``__init__``'s parameters, which unpickling relies on) and an ``__init__``
    that calls :meth:`_assign` with every field.
    """

    __slots__ = ()

    def _assign(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _fields(self) -> tuple[str, ...]:
        fields: tuple[str, ...] = type(self).__slots__
        return fields

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields())

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields())
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._values())
