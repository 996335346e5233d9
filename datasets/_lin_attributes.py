"""Reader of the Lin et al. identity attributes (``market_attribute.mat``, ``duke_attribute.mat``).

Format (Lin et al., "Improving Person Re-identification by Attribute and Identity Learning", Pattern
Recognition 2019): a MATLAB struct (``market_attribute`` / ``duke_attribute``) with fields ``train`` and
``test``; each is a struct of per-identity uint8 fields of shape (1, n) plus ``image_index`` (the
identities as 4-digit strings). Codes start at 1: 1 = no / 2 = yes for a binary field, 1..k for an
ordinal one; any other code (the DukeMTMC ``top`` field holds a few zeros) reads as unknown (-1).

The schema is derived from the file's own field names, not from a fixed list:

* fields ``up<colour>`` / ``down<colour>`` (two or more, coded no/yes) form one categorical group
  ``upper_color`` / ``lower_color`` whose values are the colour names; an identity with zero or several
  "yes" in a family gets -1;
* fields known from Lin et al.'s annotation get readable group names and value labels from
  :data:`CONVENTIONS` (e.g. Market-1501 ``up`` -> ``sleeve`` in {long, short}), the file field being
  kept in :attr:`AttributeGroup.fields`;
* any other field coded 1/2 becomes a no/yes group under its own name, and any other multi-valued field
  a group whose labels are its raw codes.

Fields may come in a different order in ``train`` and ``test`` (they do in both published files): they are
aligned by name, and the schema's order never depends on the file's field order.
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from hashbench.data import AttributeGroup, AttributeSchema, AttributeTable
from hashbench.errors import HashbenchError

log = logging.getLogger(__name__)

INDEX_FIELD = "image_index"
SPLIT_FIELDS = ("train", "test")
YES_CODE = 2  # "yes" in a Lin et al. binary field; "no" is 1
NO_YES = ("no", "yes")
# one-hot colour families: field-name prefix -> group name (in schema order)
COLOR_FAMILIES = (("up", "upper_color"), ("down", "lower_color"))


@dataclass(frozen=True)
class FieldConvention:
    """How one known Lin et al. field reads: group name, labels of codes 1..k, description."""

    group: str
    values: tuple[str, ...]
    description: str


# Known fields of Lin et al.'s Market-1501 and DukeMTMC-reID annotations, in schema order. Note the two
# length fields code opposite ways round: Market ``up`` is 1 = long sleeve, Duke ``top`` is 1 = short.
CONVENTIONS: Mapping[str, FieldConvention] = MappingProxyType(
    {
        "gender": FieldConvention("gender", ("male", "female"), "gender"),
        "age": FieldConvention("age", ("young", "teenager", "adult", "old"), "age group"),
        "hair": FieldConvention("hair", ("short", "long"), "hair length"),
        "up": FieldConvention("sleeve", ("long", "short"), "sleeve length (Market-1501 field 'up')"),
        "top": FieldConvention(
            "upper_length", ("short", "long"), "length of upper-body clothing (field 'top')"
        ),
        "down": FieldConvention(
            "lower_length", ("long", "short"), "length of lower-body clothing (field 'down')"
        ),
        "clothes": FieldConvention(
            "lower_type", ("dress", "pants"), "type of lower-body clothing (field 'clothes')"
        ),
        "hat": FieldConvention("hat", NO_YES, "wearing a hat"),
        "backpack": FieldConvention("backpack", NO_YES, "carrying a backpack"),
        "bag": FieldConvention("bag", NO_YES, "carrying a bag"),
        "handbag": FieldConvention("handbag", NO_YES, "carrying a handbag"),
        "boots": FieldConvention("boots", NO_YES, "wearing boots"),
        "shoes": FieldConvention("shoe_color", ("dark", "light"), "colour of shoes (field 'shoes')"),
    }
)


@dataclass(frozen=True)
class _Split:
    """One split struct of the file: its identities and its raw per-identity field vectors."""

    name: str
    pids: np.ndarray
    fields: dict[str, np.ndarray]


def read_lin_attributes(path: str | Path, data: bytes | None = None) -> AttributeTable:
    """Read a Lin et al. attribute file into an :class:`AttributeTable` (train and test identities).

    ``path`` names the file (in every error message); when ``data`` is given the file is read from those
    bytes instead of from disk (e.g. a member of a zip, then ``path`` reads ``archive.zip:member``).
    """
    label = str(path)
    splits = _read_splits(label, data)
    names = sorted({f for s in splits for f in s.fields})
    families = _color_families(names, splits)
    in_family = {f for _, colours in families for f in colours.values()}
    groups: list[AttributeGroup] = []
    columns: list[np.ndarray] = []
    plain = [f for f in CONVENTIONS if f in names and f not in in_family]
    plain += [f for f in names if f not in CONVENTIONS and f not in in_family]
    for field_name in plain:
        group, column = _plain_group(label, field_name, splits)
        groups.append(group)
        columns.append(column)
    for group_name, colours in families:
        group, column = _family_group(group_name, colours, splits)
        groups.append(group)
        columns.append(column)
    seen: set[str] = set()
    for g in groups:
        if g.name in seen:
            raise HashbenchError(f"{label}: two fields map to attribute group {g.name!r}")
        seen.add(g.name)
    pids = np.concatenate([s.pids for s in splits])
    values = np.stack(columns, axis=1) if columns else np.zeros((len(pids), 0), dtype=np.int16)
    pids, values = _dedupe(label, pids, values)
    return AttributeTable(AttributeSchema(tuple(groups)), pids, values, source=label)


def _read_splits(label: str, data: bytes | None) -> list[_Split]:
    source = io.BytesIO(data) if data is not None else label
    try:
        mat = scipy.io.loadmat(source, squeeze_me=True, struct_as_record=False, chars_as_strings=True)
    except FileNotFoundError:
        raise HashbenchError(f"{label}: no such file") from None
    except NotImplementedError:
        raise HashbenchError(
            f"{label}: MATLAB v7.3 (HDF5) files are not supported; re-save it with -v7"
        ) from None
    except (MatReadError, ValueError, TypeError, OSError, EOFError, zlib.error) as exc:
        raise HashbenchError(f"{label}: not a readable MATLAB .mat file ({exc})") from None
    for key, top in mat.items():
        if key.startswith("__") or not _is_struct(top):
            continue
        present = [s for s in SPLIT_FIELDS if s in top._fieldnames]
        if present and all(_is_struct(getattr(top, s)) for s in present):
            return [_read_split(label, f"{key}.{s}", getattr(top, s)) for s in present]
    raise HashbenchError(
        f"{label}: not a Lin et al. attribute file (expected a struct with 'train'/'test' sub-structs)"
    )


def _is_struct(obj: object) -> bool:
    return hasattr(obj, "_fieldnames")


def _read_split(label: str, where: str, struct: object) -> _Split:
    if INDEX_FIELD not in struct._fieldnames:
        raise HashbenchError(f"{label}: not a Lin et al. attribute file ({where} has no {INDEX_FIELD!r})")
    pids = _parse_ids(label, where, getattr(struct, INDEX_FIELD))
    fields: dict[str, np.ndarray] = {}
    for name in struct._fieldnames:
        if name == INDEX_FIELD:
            continue
        raw = np.atleast_1d(np.asarray(getattr(struct, name))).ravel()
        if raw.dtype.kind not in "iuf" or len(raw) != len(pids):
            raise HashbenchError(
                f"{label}: {where}.{name} is not one integer code per identity "
                f"({raw.dtype}, {len(raw)} values for {len(pids)} identities)"
            )
        codes = (
            np.where(np.isfinite(raw), raw, 0).astype(np.int64)
            if raw.dtype.kind == "f"
            else raw.astype(np.int64)
        )
        fields[name] = codes
    return _Split(where, pids, fields)


def _parse_ids(label: str, where: str, raw: object) -> np.ndarray:
    items = np.atleast_1d(np.asarray(raw, dtype=object)).ravel()
    out = np.empty(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        text = str(np.asarray(item).ravel()[0]) if np.ndim(item) else str(item)
        try:
            out[i] = int(text.strip())
        except ValueError:
            raise HashbenchError(
                f"{label}: {where}.{INDEX_FIELD}[{i}] = {text!r} is not an identity number"
            ) from None
    return out


def _positive_codes(field_name: str, splits: list[_Split]) -> np.ndarray:
    parts = [s.fields[field_name] for s in splits if field_name in s.fields]
    codes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return codes[codes > 0]


def _color_families(names: list[str], splits: list[_Split]) -> list[tuple[str, dict[str, str]]]:
    """``[(group name, {colour: field})]`` for each prefix with two or more no/yes ``<prefix><colour>`` fields."""
    out = []
    for prefix, group_name in COLOR_FAMILIES:
        colours = {
            f[len(prefix) :]: f
            for f in names
            if f.startswith(prefix)
            and f[len(prefix) :].isalpha()
            and f not in CONVENTIONS
            and set(_positive_codes(f, splits).tolist()) <= {1, YES_CODE}
        }
        if len(colours) >= 2:
            out.append((group_name, dict(sorted(colours.items()))))
    return out


def _plain_group(label: str, field_name: str, splits: list[_Split]) -> tuple[AttributeGroup, np.ndarray]:
    """One field -> one group; file code ``c`` becomes value code ``c - 1`` (raw-code groups: its rank)."""
    observed = _positive_codes(field_name, splits)
    convention = CONVENTIONS.get(field_name)
    if convention is not None:
        group = AttributeGroup(convention.group, convention.values, (field_name,), convention.description)
        codes = np.arange(1, len(convention.values) + 1)
    elif set(observed.tolist()) <= {1, YES_CODE}:
        group = AttributeGroup(field_name, NO_YES, (field_name,), f"field {field_name!r} (1 = no, 2 = yes)")
        codes = np.array([1, YES_CODE])
    else:
        group = AttributeGroup(
            field_name, tuple(str(c) for c in observed), (field_name,), f"field {field_name!r} (raw codes)"
        )
        codes = observed
    parts = []
    for s in splits:
        raw = s.fields.get(field_name)
        if raw is None:
            parts.append(np.full(len(s.pids), -1, dtype=np.int16))
            continue
        pos = np.searchsorted(codes, raw).clip(max=len(codes) - 1)
        parts.append(np.where(codes[pos] == raw, pos, -1).astype(np.int16))
    column = np.concatenate(parts)
    unknown = int((column < 0).sum())
    if unknown:
        log.info(
            "%s: field %r has %d identities with no valid code; they read as unknown",
            label,
            field_name,
            unknown,
        )
    return group, column


def _family_group(
    group_name: str, colours: dict[str, str], splits: list[_Split]
) -> tuple[AttributeGroup, np.ndarray]:
    """A one-hot family -> one categorical group; zero or several "yes" -> -1."""
    names = tuple(colours)
    fields = tuple(colours.values())
    side = "upper" if group_name == "upper_color" else "lower"
    group = AttributeGroup(group_name, names, fields, f"colour of {side}-body clothing (one-hot fields)")
    parts = []
    for s in splits:
        yes = np.stack(
            [s.fields.get(f, np.zeros(len(s.pids), dtype=np.int64)) == YES_CODE for f in fields], axis=1
        )
        parts.append(np.where(yes.sum(axis=1) == 1, yes.argmax(axis=1), -1).astype(np.int16))
    return group, np.concatenate(parts)


def _dedupe(label: str, pids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated identities with identical rows; conflicting repeats are an error."""
    unique, first = np.unique(pids, return_index=True)
    if len(unique) == len(pids):
        return pids, values
    for i, pid in enumerate(pids):
        j = first[np.searchsorted(unique, pid)]
        if j != i and not np.array_equal(values[i], values[j]):
            raise HashbenchError(f"{label}: identity {pid:04d} is annotated twice, differently")
    keep = np.sort(first)
    return pids[keep], values[keep]
