"""The API's look-up tables (id -> row, titles, categories, transposed item-item matrices) as arrays.

An API worker needs to find a user's or an item's row from its id, an item's title and categories,
the items of a category, and, for reasons, the columns of an item-item similarity matrix. Built as
Python objects (dicts of a million strings, lists of lists) they cost each worker hundreds of MB of
private memory at a million items. Here every table is a NumPy array written in the artifact
(`lookup.<name>` members of `arrays.npz`, see `contract/artifact.py`), so the API reads them from the
same memory map as the rest of the artifact and N workers share one copy:

    user_order, item_order      argsort of `user_ids` / `item_ids`: an id's row by binary search
    category_keys               the distinct casefolded categories, sorted
    category_names              the catalog's spelling of each (its first occurrence)
    category_items              CSR categories x items: the items of each category, ascending
    <component>.similarity_t    an item-item component's similarity matrix transposed (CSR), so a
                                recommended item's column is a cheap row

`lookup_arrays` computes them when an artifact is written; an artifact written before they existed
still loads, and the API computes them at load (in its own memory, as it did before).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

SIMILARITY_T = "similarity_t"


class LookupTableError(ValueError):
    """A look-up array that does not fit the artifact's ids (raised as `ArtifactError` by the loader)."""


def _order(ids: np.ndarray) -> np.ndarray:
    dtype = np.int32 if len(ids) < 2**31 else np.int64
    return np.argsort(ids, kind="stable").astype(dtype, copy=False)


def _split_categories(text: str) -> list[str]:
    return [c for c in str(text).split("|") if c]


def category_arrays(item_categories: np.ndarray) -> dict[str, Any]:
    """The category tables of a catalog ("|"-joined categories per item)."""
    members: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    for idx, cats in enumerate(item_categories.tolist()):
        for cat in _split_categories(cats):
            key = cat.casefold()
            members.setdefault(key, []).append(idx)
            names.setdefault(key, cat)
    keys = sorted(members)
    total = sum(len(v) for v in members.values())
    # one index dtype for both, so scipy wraps the stored arrays without converting either
    index_dtype = np.int32 if max(total, len(item_categories)) < 2**31 else np.int64
    indptr = np.zeros(len(keys) + 1, dtype=index_dtype)
    indptr[1:] = np.cumsum([len(members[k]) for k in keys])
    indices = np.fromiter((i for k in keys for i in members[k]), dtype=index_dtype, count=total)
    matrix = sp.csr_matrix(
        (np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(len(keys), len(item_categories))
    )
    return {
        "category_keys": np.asarray(keys, dtype=str),
        "category_names": np.asarray([names[k] for k in keys], dtype=str),
        "category_items": matrix,
    }


def lookup_arrays(
    user_ids: np.ndarray, item_ids: np.ndarray, item_categories: np.ndarray, components: Mapping[str, Any]
) -> dict[str, Any]:
    """Every look-up table of an artifact, by name (see the module docstring)."""
    out: dict[str, Any] = {"user_order": _order(user_ids), "item_order": _order(item_ids)}
    out.update(category_arrays(item_categories))
    for name, comp in components.items():
        if comp.kind == "item_item":
            out[f"{name}.{SIMILARITY_T}"] = sp.csr_matrix(comp.arrays["similarity"]).T.tocsr()
    return out


class IdIndex:
    """id -> row of a text id array, by binary search over a stored argsort (no per-process dict).

    `get(id, default)` answers like a dict's: the row of the id, or `default` when it is unknown.
    """

    def __init__(self, ids: np.ndarray, order: np.ndarray | None = None) -> None:
        self.ids = ids
        self.order = _order(ids) if order is None else order
        if self.order.shape != (len(ids),):
            raise LookupTableError(f"id order has shape {self.order.shape}, expected ({len(ids)},)")
        if len(ids) and (int(self.order.min()) < 0 or int(self.order.max()) >= len(ids)):
            raise LookupTableError("id order holds rows outside the id array")

    def _id_at(self, row: Any) -> str:
        return self.ids[row]

    def get(self, key: object, default: Any = None) -> Any:
        if not isinstance(key, str):  # ids are text: any other key is unknown, as in a dict of text keys
            return default
        n = len(self.ids)
        # bisect in Python: ~20 steps at a million ids; np.searchsorted(..., sorter=) checks the whole
        # sorter on every call (0.25 ms at a million)
        pos = bisect.bisect_left(self.order, key, key=self._id_at)
        if pos < n:
            row = int(self.order[pos])
            if self.ids[row] == key:
                return row
        return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __getitem__(self, key: str) -> int:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def __len__(self) -> int:
        return len(self.ids)


class Titles:
    """Item titles read from the artifact's array on access; an empty title reads as the item's id."""

    def __init__(self, titles: np.ndarray, ids: np.ndarray) -> None:
        self.titles, self.ids = titles, ids

    def __getitem__(self, j: int) -> str:
        return str(self.titles[j]) or str(self.ids[j])

    def __len__(self) -> int:
        return len(self.titles)

    def __iter__(self) -> Iterator[str]:
        return (self[j] for j in range(len(self)))


class Categories:
    """Each item's categories (a list), split from the artifact's "|"-joined text on access."""

    def __init__(self, item_categories: np.ndarray) -> None:
        self.text = item_categories

    def __getitem__(self, j: int) -> list[str]:
        return _split_categories(self.text[j])

    def __len__(self) -> int:
        return len(self.text)

    def __iter__(self) -> Iterator[list[str]]:
        return (self[j] for j in range(len(self)))


class CategoryIndex:
    """Casefolded category -> its items (ascending) and -> the catalog's spelling, over the arrays."""

    def __init__(self, keys: np.ndarray, names: np.ndarray, items: sp.csr_matrix, n_items: int) -> None:
        if items.shape != (len(keys), n_items) or len(names) != len(keys):
            raise LookupTableError(f"category tables of shape {items.shape} do not fit {len(keys)} categories")
        self.keys, self.names, self.items = keys, names, items
        # a few hundred categories at most: a small dict of name -> row is per process
        self._rows = {k: i for i, k in enumerate(keys.tolist())}

    def get(self, key: object, default: Any = None) -> Any:
        row = self._rows.get(key)
        if row is None:
            return default
        lo, hi = self.items.indptr[row], self.items.indptr[row + 1]
        return np.asarray(self.items.indices[lo:hi], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def spelling(self) -> CategorySpelling:
        return CategorySpelling(self)


class CategorySpelling:
    """Casefolded category -> the catalog's spelling, `get(key, default)` like a dict's."""

    def __init__(self, index: CategoryIndex) -> None:
        self.index = index

    def get(self, key: object, default: Any = None) -> Any:
        row = self.index._rows.get(key)
        return default if row is None else str(self.index.names[row])
