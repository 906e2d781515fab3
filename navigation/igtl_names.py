"""OpenIGTLink device names: every name OrthoNav streams, mapped to at most 20 bytes.

The OpenIGTLink header holds a device name of 20 bytes (ASCII, zero-padded), and a planner's
names are longer (``Cut_posterior_chamfer`` is 21). :func:`device_name_map` gives each name a
device that fits, with three rules, applied to the whole set of names at once (so the result
does not depend on their order, and the same names give the same devices on every run and
every machine):

1. a name of printable ASCII with at most 20 bytes is sent unchanged;
2. otherwise its words are abbreviated: a ``Cut_`` / ``Bone_`` prefix and a ``ToReference``
   suffix are kept, the ``_``-separated words in between are shortened by
   :data:`ABBREVIATIONS` (``posterior`` -> ``Post``, ``chamfer`` -> ``Chamf``) or capitalised,
   and joined: ``Cut_posterior_chamfer`` -> ``Cut_PostChamf``;
3. a name whose abbreviation is still too long, that holds characters other than printable
   ASCII, or whose abbreviation equals another device (a kept name or another abbreviation)
   is cut short and ends in ``_`` and 4 hex digits of the SHA-1 of the full name (6, 8, ...
   on a clash): ``Bone_a_very_long_custom_bone_name`` -> ``Bone_AVeryLongC_e052``.

Rule 1 names always keep their name; an existing map (``taken``) is never changed when a name
is added, so a device already sent is never renamed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

from orthonav.core.errors import InputError

#: Bytes of an OpenIGTLink device name.
DEVICE_NAME_BYTES = 20

#: Word abbreviations used by :func:`device_name_map` (lower-case word -> short form).
ABBREVIATIONS: dict[str, str] = {
    "acetabular": "Acet", "acetabulum": "Acet", "anterior": "Ant", "chamfer": "Chamf",
    "distal": "Dist", "femoral": "Fem", "femur": "Fem", "fibula": "Fib", "head": "Head",
    "inferior": "Inf", "lateral": "Lat", "left": "L", "medial": "Med", "neck": "Neck",
    "patella": "Pat", "pelvis": "Pelv", "posterior": "Post", "proximal": "Prox",
    "reference": "Ref", "resection": "Resec", "right": "R", "sacrum": "Sacr",
    "superior": "Sup", "tibia": "Tib", "tibial": "Tib", "trochlea": "Troch",
}
_PREFIXES = ("Cut_", "Bone_")
_SUFFIXES = ("ToReference",)
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")


def _fits(name: str) -> bool:
    return bool(_PRINTABLE.match(name)) and len(name) <= DEVICE_NAME_BYTES


def _split(name: str) -> tuple[str, str, str]:
    """(kept prefix, middle, kept suffix) of a name."""
    prefix = next((p for p in _PREFIXES if name.startswith(p)), "")
    rest = name[len(prefix):]
    suffix = next((s for s in _SUFFIXES if rest.endswith(s) and len(rest) > len(s)), "")
    return prefix, rest[: len(rest) - len(suffix)], suffix


def abbreviate(name: str) -> str:
    """Rule 2 of :func:`device_name_map`: ``Cut_posterior_chamfer`` -> ``Cut_PostChamf``.

    Keeps a ``Cut_`` / ``Bone_`` prefix and a ``ToReference`` suffix, shortens each
    ``_``/space/``-``-separated word of the middle by :data:`ABBREVIATIONS` (else capitalises
    it) and drops characters other than ASCII letters and digits. The result may still be
    longer than 20 bytes.
    """
    prefix, middle, suffix = _split(name)
    words = [w for w in re.split(r"[_\s\-]+", middle) if w]
    short = []
    for w in words:
        clean = re.sub(r"[^A-Za-z0-9]", "", w)
        if clean:
            short.append(ABBREVIATIONS.get(clean.lower(), clean[:1].upper() + clean[1:]))
    return prefix + "".join(short) + suffix


def hashed_name(name: str, digits: int = 4) -> str:
    """Rule 3 of :func:`device_name_map`: the abbreviation cut short + ``_`` + ``digits`` hex
    digits of the SHA-1 of ``name`` (UTF-8), at most 20 bytes."""
    prefix, _middle, suffix = _split(name)
    tag = "_" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:digits]
    short = abbreviate(name)
    middle = short[len(prefix): len(short) - len(suffix)] if suffix else short[len(prefix):]
    room = DEVICE_NAME_BYTES - len(prefix) - len(suffix) - len(tag)
    if room < 1:  # prefix and suffix leave no room: the suffix goes
        return (prefix + middle)[: DEVICE_NAME_BYTES - len(tag)] + tag
    return prefix + middle[:room] + tag + suffix


def device_name_map(names: Iterable[str], taken: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each name to a unique OpenIGTLink device name of at most 20 ASCII bytes.

    Parameters
    ----------
    names
        The names (duplicates are ignored). The result does not depend on their order.
    taken
        A map made before (name -> device): its entries are kept as they are and its devices
        are not given to any new name (to add a name to a running stream).

    Returns
    -------
    dict
        ``taken`` plus every new name -> its device, by the rules in the module docstring.

    Raises
    ------
    InputError
        No unique name can be made (16 hex digits of SHA-1 clash: in practice never).
    """
    out = dict(taken or {})
    new = sorted({n for n in names if n not in out})
    used = set(out.values())
    # Rule 1 first: names that fit keep their name, whatever else is in the stream.
    for n in new:
        if _fits(n) and n not in used:
            out[n] = n
            used.add(n)
    rest = [n for n in new if n not in out]
    short = {n: abbreviate(n) for n in rest}
    counts: dict[str, int] = {}
    for s in short.values():
        counts[s] = counts.get(s, 0) + 1
    for n in rest:  # Rule 2 where the abbreviation fits and is unique
        s = short[n]
        if _fits(n) or not _PRINTABLE.match(n):
            continue  # its own name is taken, or it is not printable ASCII: rule 3
        if s and _fits(s) and counts[s] == 1 and s not in used:
            out[n] = s
            used.add(s)
    for n in rest:  # Rule 3
        if n in out:
            continue
        for digits in (4, 6, 8, 12, 16):
            h = hashed_name(n, digits)
            if h not in used:
                break
        else:
            raise InputError(None, f"no unique OpenIGTLink device name for {n!r}")
        out[n] = h
        used.add(h)
    for d in out.values():
        check_device_name(d)
    return out


#: Suffix of a bone's transform (one array per bone): ``FemurToCT``.
BONE_TRANSFORM_SUFFIX = "ToCT"


def bone_transform_name(bone: str) -> str:
    """The name of a bone's pose stream (one array per bone): the bone's ``_``-separated words
    capitalised + ``ToCT``: ``femur`` -> ``FemurToCT``, ``tibia_left`` -> ``TibiaLeftToCT``
    (then mapped to a device by :func:`device_name_map` like every other name)."""
    words = [re.sub(r"[^A-Za-z0-9]", "", w) for w in re.split(r"[_\s\-]+", bone)]
    return "".join(w[:1].upper() + w[1:] for w in words if w) + BONE_TRANSFORM_SUFFIX


def check_device_name(device: str) -> str:
    """``device`` if it is a valid OpenIGTLink device name (printable ASCII, 1-20 bytes).

    Raises
    ------
    InputError
        Otherwise, naming the device.
    """
    if not device or not _fits(device):
        raise InputError(None, f"not an OpenIGTLink device name (printable ASCII, 1-20 bytes): {device!r}")
    return device


__all__ = [
    "ABBREVIATIONS",
    "BONE_TRANSFORM_SUFFIX",
    "DEVICE_NAME_BYTES",
    "abbreviate",
    "bone_transform_name",
    "check_device_name",
    "device_name_map",
    "hashed_name",
]
