"""A small case-insensitive multi-valued header map, used for requests and responses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class Headers:
    """Ordered ``(name, value)`` pairs with case-insensitive lookup.

    Names keep the case they were given; lookups ignore case. ``get`` returns the first value.
    The lookup index is built on first use, so a request whose headers nobody reads costs nothing.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = list(items) if items is not None else []
        self._index: dict[str, list[str]] | None = None

    def _lookup(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            for name, value in self._items:
                key = name.lower()
                if key in index:
                    index[key].append(value)
                else:
                    index[key] = [value]
            self._index = index
        return index

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        values = self._lookup().get(name.lower())
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        """Every value of ``name`` in order (empty when absent)."""
        return list(self._lookup().get(name.lower(), ()))

    def __getitem__(self, name: str) -> str:
        values = self._lookup().get(name.lower())
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup()

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def items(self) -> list[tuple[str, str]]:
        """All pairs in order, repeated names included."""
        return list(self._items)

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with ``value``."""
        self.remove(name)
        self._items.append((name, value))
        self._index = None

    def add(self, name: str, value: str) -> None:
        """Append one more value of ``name``."""
        self._items.append((name, value))
        self._index = None

    def remove(self, name: str) -> None:
        """Drop every value of ``name``."""
        key = name.lower()
        if self._index is not None and key not in self._index:
            return
        self._items = [item for item in self._items if item[0].lower() != key]
        self._index = None

    def setdefault(self, name: str, value: str) -> str:
        """The first value of ``name``; sets it to ``value`` first when absent."""
        current = self.get(name)
        if current is None:
            self.add(name, value)
            return value
        return current
