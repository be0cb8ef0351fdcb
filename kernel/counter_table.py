"""The table of one name in a node-wide counter zone: the slots, and the operations
:class:`plugin_sdk.SharedCounters` calls.

kernel/counters.py explains the design. It covers the shared mapping, the segment locks,
hashing and probing, backward-shift removal and eviction. This module holds the slot layout and
:class:`CounterTable`. The zone (:class:`kernel.counters.CounterZone`) owns the memory and the
locks.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from kernel.counters import CounterZone

log = logging.getLogger("sixgate.plugins")

T = TypeVar("T")

SLOT_SIZE = 128
"""Bytes per slot."""
KEY_MAX = 88
"""Longest key stored as is (UTF-8 bytes); longer keys are stored as a digest."""
PROBE = 64
"""Slots a key may sit from its home slot (the most a lookup reads)."""

_EMPTY, _LIVE = 0, 1
_INT = 1  # flags: the value is an integer
_DIGEST_KLEN = 0x80 | 32  # key length byte of a digest key
_SLOT = struct.Struct("<BBBBiqddd")  # state flags ns klen pad hash expires value aux
_KEY_OFF = _SLOT.size  # 40
_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")
_EXP_VALUE_AUX = struct.Struct("<ddd")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _expiry(ttl: float | None, now: float) -> float:
    if ttl is None:
        return 0.0
    if not ttl > 0:
        raise ValueError("ttl must be positive (None: never expires)")
    return now + ttl


class CounterTable:
    """The numbers of one name (a namespace of a :class:`CounterZone`): what
    :class:`plugin_sdk.SharedCounters` calls. Every method is atomic across the node."""

    __slots__ = ("_acquire", "_clock", "_locks", "_mm", "_probe", "_release", "_seg_bits",
                 "_seg_mask", "_seg_slots", "_slots_off", "name", "ns", "zone")

    def __init__(self, zone: CounterZone, name: str, ns: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.zone = zone
        self.name = name
        self.ns = ns
        self._clock = clock
        self._mm = zone.mm
        self._locks = zone.locks[1:]
        self._acquire = zone.acquire
        self._release = zone.release
        self._seg_mask = zone.segments - 1
        self._seg_bits = zone.segments.bit_length() - 1
        self._seg_slots = zone.seg_slots
        self._slots_off = zone.slots_off
        self._probe = zone.probe

    def __repr__(self) -> str:
        return f"<CounterTable {self.name!r} in zone {self.zone.name!r}>"

    # -- lookup (the caller holds the segment lock) --------------------------------------------
    def _find(self, seg: int, home: int, h: int, kb: bytes, klen: int,
              now: float) -> tuple[int, tuple[Any, ...] | None]:
        """``(offset, header)`` of the key's live entry, else ``(offset, None)``: the key's own
        expired slot, or the empty slot an insert takes (offset 0: the probe window is full).
        Expired entries of other keys met on the way are removed."""
        mm = self._mm
        ns = self.ns
        n = self._seg_slots
        base = self._slots_off + seg * n * SLOT_SIZE
        unpack = _SLOT.unpack_from
        i = 0
        while i < self._probe:
            index = (home + i) % n
            off = base + index * SLOT_SIZE
            hdr = unpack(mm, off)
            if hdr[0] != _LIVE:
                return off, None
            exp = hdr[6]
            if (hdr[5] == h and hdr[2] == ns and hdr[3] == klen
                    and mm[off + _KEY_OFF:off + _KEY_OFF + (klen & 0x7F)] == kb):
                return (off, None) if exp and exp <= now else (off, hdr)
            if exp and exp <= now:
                self._remove(seg, index)  # the next entry of the run moves here: look again
                continue
            i += 1
        return 0, None

    def _remove(self, seg: int, hole: int) -> None:
        """Empty slot ``hole`` of ``seg`` by backward shift (no tombstones): the entries after
        it in the run move back while that keeps each between its home slot and the hole."""
        mm = self._mm
        n = self._seg_slots
        bits = self._seg_bits
        base = self._slots_off + seg * n * SLOT_SIZE
        j = hole
        for _ in range(n - 1):
            j = (j + 1) % n
            at = base + j * SLOT_SIZE
            if mm[at] != _LIVE:
                break
            home = (_I64.unpack_from(mm, at + 8)[0] >> bits) % n
            if (hole < home <= j) if hole < j else (home > hole or home <= j):
                continue  # its home is after the hole: it stays
            dst = base + hole * SLOT_SIZE
            mm[dst:dst + SLOT_SIZE] = mm[at:at + SLOT_SIZE]
            hole = j
        mm[base + hole * SLOT_SIZE] = _EMPTY
        self.zone.add_used(seg, -1)

    def _claim(self, seg: int, home: int, off: int, now: float) -> int:
        """The slot to write a new entry to: ``off`` or, when the window is full, the entry
        that expires soonest (evicted)."""
        mm = self._mm
        if off:
            if mm[off] != _LIVE:
                self.zone.add_used(seg, 1)
            return off
        n = self._seg_slots
        base = self._slots_off + seg * n * SLOT_SIZE
        victim, soonest = 0, float("inf")
        for i in range(self._probe):
            cand = base + ((home + i) % n) * SLOT_SIZE
            exp = _F64.unpack_from(mm, cand + 16)[0] or float("inf")
            if not victim or exp < soonest:
                victim, soonest = cand, exp
        zone = self.zone
        if not zone.warned_full:
            zone.warned_full = True
            size_key = ("nginx_config.http.lua_shared_dict." + zone.name)
            log.error("shared counters zone %r is full (%d slots): evicting the entries that "
                      "expire soonest, so those keys start afresh (raise %s)",
                      zone.name, zone.capacity, size_key)
        return victim

    def _write(self, off: int, flags: int, h: int, kb: bytes, klen: int, exp: float,
               value: float, aux: float) -> None:
        mm = self._mm
        _SLOT.pack_into(mm, off, _LIVE, flags, self.ns, klen, 0, h, exp, value, aux)
        mm[off + _KEY_OFF:off + _KEY_OFF + len(kb)] = kb

    def _locate(self, key: str) -> tuple[bytes, int, int, int, int]:
        kb = key.encode()
        klen = len(kb)
        if klen > KEY_MAX:
            kb, klen = _digest(kb), _DIGEST_KLEN
        h = hash(key)
        return kb, klen, h, h & self._seg_mask, (h >> self._seg_bits) % self._seg_slots

    # -- the operations -----------------------------------------------------------------------
    def incr(self, key: str, delta: int | float = 1, init: int | float = 0,
             ttl: float | None = None) -> int | float:
        return self.incr_ttl(key, delta, init, ttl)[0]

    def incr_ttl(self, key: str, delta: int | float = 1, init: int | float = 0,
                 ttl: float | None = None) -> tuple[int | float, float | None]:
        """:meth:`incr` that also returns the seconds left before the key expires (``None``:
        never), read in the same atomic step: limit-count's remaining and reset in one call.
        :meth:`incr` is this without the second number."""
        kb = key.encode()
        klen = len(kb)
        if klen > KEY_MAX:
            kb, klen = _digest(kb), _DIGEST_KLEN
        h = hash(key)
        n = self._seg_slots
        seg = h & self._seg_mask
        home = (h >> self._seg_bits) % n
        lock = self._locks[seg]
        rc = self._acquire(lock)
        if rc:
            self.zone.contended(lock, rc)
        try:
            now = self._clock()
            mm = self._mm
            off = self._slots_off + (seg * n + home) * SLOT_SIZE
            found: tuple[Any, ...] | None = _SLOT.unpack_from(mm, off)
            state, flags, ns, length, _, stored, exp, value, _ = found  # type: ignore[misc]
            if not (stored == h and state == _LIVE and ns == self.ns and length == klen
                    and (not exp or exp > now)
                    and mm[off + _KEY_OFF:off + _KEY_OFF + (klen & 0x7F)] == kb):
                off, found = self._find(seg, home, h, kb, klen, now)
                if found is not None:
                    flags, exp, value = found[1], found[6], found[7]
            if found is not None:
                if flags & _INT:
                    if type(delta) is int:
                        value = int(value) + delta
                    else:
                        value += delta
                        mm[off + 1] = 0
                else:
                    value += delta
                _F64.pack_into(mm, off + 24, value)
                return value, (exp - now if exp else None)
            if not (_is_number(delta) and _is_number(init)):
                raise TypeError("shared counters: incr() needs numbers")
            result = init + delta
            exp = _expiry(ttl, now)
            off = self._claim(seg, home, off, now)
            self._write(off, _INT if type(result) is int else 0, h, kb, klen, exp, result, 0.0)
            return result, (exp - now if exp else None)
        finally:
            self._release(lock)

    def get(self, key: str, default: Any = None) -> Any:
        kb, klen, h, seg, home = self._locate(key)
        lock = self._locks[seg]
        rc = self._acquire(lock)
        if rc:
            self.zone.contended(lock, rc)
        try:
            _, hdr = self._find(seg, home, h, kb, klen, self._clock())
        finally:
            self._release(lock)
        if hdr is None:
            return default
        return int(hdr[7]) if hdr[1] & _INT else hdr[7]

    def _store(self, key: str, value: int | float, ttl: float | None, only_new: bool) -> bool:
        if not _is_number(value):
            raise TypeError(f"shared counters hold numbers, not {type(value).__name__}")
        kb, klen, h, seg, home = self._locate(key)
        lock = self._locks[seg]
        rc = self._acquire(lock)
        if rc:
            self.zone.contended(lock, rc)
        try:
            now = self._clock()
            exp = _expiry(ttl, now)
            off, hdr = self._find(seg, home, h, kb, klen, now)
            if hdr is not None:
                if only_new:
                    return False
            else:
                off = self._claim(seg, home, off, now)
            self._write(off, _INT if type(value) is int else 0, h, kb, klen, exp,
                        float(value), 0.0)
            return True
        finally:
            self._release(lock)

    def set(self, key: str, value: int | float, ttl: float | None = None) -> None:
        self._store(key, value, ttl, False)

    def add(self, key: str, value: int | float, ttl: float | None = None) -> bool:
        return self._store(key, value, ttl, True)

    def delete(self, key: str) -> bool:
        kb, klen, h, seg, home = self._locate(key)
        lock = self._locks[seg]
        rc = self._acquire(lock)
        if rc:
            self.zone.contended(lock, rc)
        try:
            off, hdr = self._find(seg, home, h, kb, klen, self._clock())
            if hdr is None:
                return False  # absent, or expired (its slot is reused by a later insert)
            n = self._seg_slots
            self._remove(seg, (off - self._slots_off) // SLOT_SIZE - seg * n)
            return True
        finally:
            self._release(lock)

    def ttl(self, key: str) -> float | None:
        kb, klen, h, seg, home = self._locate(key)
        lock = self._locks[seg]
        rc = self._acquire(lock)
        if rc:
            self.zone.contended(lock, rc)
        try:
            now = self._clock()
            _, hdr = self._find(seg, home, h, kb, klen, now)
        finally:
            self._release(lock)
        if hdr is None:
            raise KeyError(key)
        return hdr[6] - now if hdr[6] else None

    def update(self, key: str, fn: Callable[..., tuple[tuple[float, float] | None, T]],
               *args: Any, ttl: float | None = None) -> T:
        kb, klen, h, seg, home = self._locate(key)
        lock = self._locks[seg]
        rc = self._acquire(lock)
        if rc:
            self.zone.contended(lock, rc)
        try:
            now = self._clock()
            off, hdr = self._find(seg, home, h, kb, klen, now)
            new, result = fn(None if hdr is None else (hdr[7], hdr[8]), *args)
            if new is not None:
                value, aux = new
                if hdr is not None:
                    exp = _expiry(ttl, now) if ttl is not None else hdr[6]
                    self._mm[off + 1] = 0
                    _EXP_VALUE_AUX.pack_into(self._mm, off + 16, exp, value, aux)
                else:
                    exp = _expiry(ttl, now)
                    off = self._claim(seg, home, off, now)
                    self._write(off, 0, h, kb, klen, exp, value, aux)
            return result
        finally:
            self._release(lock)

    def clear(self) -> None:
        """Remove every entry of this name (one segment locked at a time)."""
        mm = self._mm
        n = self._seg_slots
        for seg, lock in enumerate(self._locks):
            base = self._slots_off + seg * n * SLOT_SIZE
            rc = self._acquire(lock)
            if rc:
                self.zone.contended(lock, rc)
            try:
                i = 0
                while i < n:
                    off = base + i * SLOT_SIZE
                    if mm[off] == _LIVE and mm[off + 2] == self.ns:
                        self._remove(seg, i)  # another entry may move here: look again
                    else:
                        i += 1
            finally:
                self._release(lock)

    @property
    def capacity(self) -> int:
        """Entries the zone holds (shared with the other names in it)."""
        return self.zone.capacity
