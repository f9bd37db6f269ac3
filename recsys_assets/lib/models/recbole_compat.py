"""Make RecBole 1.2.1 run on this stack (numpy 2, torch >= 2.6, scipy >= 1.13, ray 2.6.3).

RecBole 1.2.1 predates these releases and breaks in five places; `patch_recbole()` fixes all of them:

1. numpy 2 removed `np.float_`, `np.bool8`, `np.complex_` and `np.unicode_`. RecBole's `Config` reads the first,
   third and fourth, and ray 2.6.3 (imported by `recbole.quick_start`) reads `np.bool8` at import time.
2. `recbole.quick_start` imports `ray.tune` at module level, only for its Ray hyper-parameter search. With the
   numpy aliases and setuptools < 81 (which still ships `pkg_resources`, needed by `import ray`), the real import
   works. Should `ray` still fail to import, `recbole.quick_start` is imported with a placeholder `tune` that
   raises the original error when used, so everything but the Ray search keeps working.
3. torch >= 2.6 loads with `weights_only=True` by default, which rejects RecBole's checkpoints (they pickle the
   whole `Config`). The checkpoint readers (`Trainer.resume_checkpoint`, `Trainer.evaluate`,
   `quick_start.load_data_and_model`) load with `weights_only=False`; every other `torch.load` is unchanged.
4. `Collector.get_data_struct` calls `.cpu()` on every collected value, but `ItemCoverage` and
   `AveragePopularity` collect plain ints and dicts; only tensors are moved now.
5. scipy >= 1.13 removed `dok_matrix._update`, which LightGCN, NGCF, SpectralCF, GCMC, NCL, KGIN and MCCLK use to
   fill their adjacency matrices; it is restored with its old bulk `dict.update` semantics.

One more fix is for a RecBole bug rather than the stack: `Pop.calculate_loss` counts an item once per training batch
however often it occurs in it (`item_cnt[item] += 1` with repeated indices), so popularity saturates and depends on
the batch size (RecBole issues #1844 and #2198, unmerged fix #2199). It now adds every occurrence.

Last, the warnings this stack raises on every training run although they change nothing here (pandas 3 and
torch API deprecations inside RecBole, with pandas pinned below 3) are filtered, each by message and by the
RecBole module that triggers it, so the terminal keeps the progress and results (`_quiet_known_warnings`).

Call `patch_recbole()` before importing any `recbole` submodule (the adapter does this for you): ray reads
`np.bool8` while it is being imported, so the aliases must exist first. Calling it again is a no-op.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

__all__ = ["NUMPY_ALIASES", "patch_recbole", "recbole_is_patched"]

F = TypeVar("F", bound=Callable[..., Any])

# Names numpy 2 removed that RecBole 1.2.1 or ray 2.6.3 still read, and what they meant in numpy 1.
NUMPY_ALIASES: dict[str, type] = {
    "float_": np.float64,
    # numpy 1.24 already removed these builtin aliases; the evaluator's MRR, MAP and NDCG use np.float
    "float": float,
    "int": int,
    "object": object,
    "str": str,
    "complex": complex,
    "bool8": np.bool_,
    "complex_": np.complex128,
    "unicode_": np.str_,
}

# Marks every function this module installs, so that patching twice never wraps a wrapper.
_MARK = "__recsys_recbole_compat__"

# True while one of RecBole's own checkpoint readers runs (see `_trust_recbole_checkpoints`).
_READING_RECBOLE_CHECKPOINT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "reading_recbole_checkpoint", default=False
)

_patched = False


def patch_recbole() -> None:
    """Apply the fixes above, once per process; call it before importing `recbole` submodules."""
    global _patched
    if _patched:
        return
    _restore_numpy_aliases()
    _make_quick_start_importable()
    _trust_recbole_checkpoints()
    _move_only_tensors_in_collector()
    _restore_dok_update()
    _count_every_occurrence_in_pop()
    _quiet_known_warnings()
    _patched = True


def recbole_is_patched() -> bool:
    """Whether `patch_recbole()` has run in this process."""
    return _patched


def _mark(function: F) -> F:
    setattr(function, _MARK, True)
    return function


def _is_marked(function: object) -> bool:
    return getattr(function, _MARK, False)


# 1. numpy aliases --------------------------------------------------------------------------------------------------


def _restore_numpy_aliases() -> None:
    for name, target in NUMPY_ALIASES.items():
        # numpy 2 raises AttributeError for removed names, so hasattr tells a removed alias from a present one;
        # a numpy that still has the name keeps its own. Asking about `np.object`/`np.str` warns that they will
        # mean numpy scalars one day: a question, not a use, so not shown.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            present = hasattr(np, name)
        if not present:
            setattr(np, name, target)


# 2. recbole.quick_start and ray ------------------------------------------------------------------------------------


def _make_quick_start_importable() -> None:
    if "recbole.quick_start" in sys.modules:
        return
    with warnings.catch_warnings():
        # ray 2.6.3 imports pkg_resources, which setuptools 80 flags as deprecated on every import.
        warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*", category=UserWarning)
        try:
            import ray.tune  # noqa: F401  (the real module: what recbole.quick_start needs)
        except ImportError as error:
            # Without pkg_resources (setuptools >= 81) or without ray, `import ray` fails. RecBole uses `tune`
            # only to report results from a Ray hyper-parameter search, so the rest of quick_start is still usable.
            _import_quick_start_with_placeholder_tune(error)
            return
        importlib.import_module("recbole.quick_start")


_QUICK_START_DEPENDENCIES = (
    "torch.distributed",
    "recbole.config",
    "recbole.data",
    "recbole.data.transform",
    "recbole.utils",
)


class _UnavailableRayTune(types.ModuleType):
    """Stands in for `ray.tune` inside `recbole.quick_start` only; using it re-raises why ray did not import."""

    def __init__(self, error: ImportError) -> None:
        super().__init__("ray.tune")
        self._error = error

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            # Introspection (hasattr(module, "__file__") while scanning sys.modules) expects AttributeError.
            raise AttributeError(name)
        raise ImportError(f"ray.tune is unavailable, so RecBole's Ray search cannot run: {self._error}") from (
            self._error
        )


def _import_quick_start_with_placeholder_tune(error: ImportError) -> None:
    # Everything quick_start imports but ray first, so that the placeholder is visible for as short as possible.
    for dependency in (
        "torch.distributed",
        "recbole.config",
        "recbole.data",
        "recbole.data.transform",
        "recbole.utils",
    ):
        importlib.import_module(dependency)
    placeholder_ray = types.ModuleType("ray")
    placeholder_ray.tune = _UnavailableRayTune(error)  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in ("ray", "ray.tune")}
    sys.modules["ray"], sys.modules["ray.tune"] = placeholder_ray, placeholder_ray.tune
    try:
        importlib.import_module("recbole.quick_start")
    finally:
        # The placeholder must not outlive this import: anyone else importing ray gets the real error.
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# 3. torch.load and RecBole checkpoints -----------------------------------------------------------------------------


def _trust_recbole_checkpoints() -> None:
    import torch

    if not _is_marked(torch.load):
        original_load = torch.load

        @functools.wraps(original_load)
        def load(*args: Any, **kwargs: Any) -> Any:
            # Only inside RecBole's checkpoint readers, and only when the caller did not choose: those files are
            # written by RecBole's own Trainer (a pickled Config next to the weights), never downloaded.
            if _READING_RECBOLE_CHECKPOINT.get() and "weights_only" not in kwargs:
                kwargs["weights_only"] = False
            return original_load(*args, **kwargs)

        torch.load = _mark(load)

    from recbole.trainer import trainer

    for name in ("resume_checkpoint", "evaluate"):
        method = getattr(trainer.Trainer, name)
        if not _is_marked(method):
            setattr(trainer.Trainer, name, _reading_recbole_checkpoint(method))

    import recbole.quick_start
    from recbole.quick_start import quick_start

    if not _is_marked(quick_start.load_data_and_model):
        wrapped = _reading_recbole_checkpoint(quick_start.load_data_and_model)
        # The package re-exports the function, so both names must point at the wrapper.
        quick_start.load_data_and_model = wrapped
        recbole.quick_start.load_data_and_model = wrapped


def _reading_recbole_checkpoint(function: F) -> F:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # A context variable, not a global flag: another thread's torch.load keeps torch's safe default.
        token = _READING_RECBOLE_CHECKPOINT.set(True)
        try:
            return function(*args, **kwargs)
        finally:
            _READING_RECBOLE_CHECKPOINT.reset(token)

    return _mark(wrapper)  # type: ignore[return-value]


# 4. Collector.get_data_struct --------------------------------------------------------------------------------------


def _move_only_tensors_in_collector() -> None:
    import copy

    import torch
    from recbole.evaluator.collector import Collector

    if _is_marked(Collector.get_data_struct):
        return

    def get_data_struct(self: Collector) -> Any:
        """Get all the evaluation resource that been collected, and reset the per-evaluation part.

        Same as RecBole 1.2.1, except that only tensors are moved to the CPU: `data.count_items` (a dict) and
        `data.num_items` (an int) have no `.cpu()`.
        """
        data = self.data_struct._data_dict
        for key, value in data.items():
            if isinstance(value, torch.Tensor):
                data[key] = value.cpu()
        returned_struct = copy.deepcopy(self.data_struct)
        for key in ["rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label"]:
            if key in self.data_struct:
                del self.data_struct[key]
        return returned_struct

    Collector.get_data_struct = _mark(get_data_struct)


# 5. scipy dok_matrix._update ---------------------------------------------------------------------------------------


def _restore_dok_update() -> None:
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        return  # scipy < 1.13 still has it (and then no `_dict` to write to)

    def _update(self: sp.dok_matrix, data: dict[tuple[int, int], Any]) -> None:
        """Bulk-set entries from `{(row, col): value}` with `dict.update` semantics, as scipy < 1.13 did.

        scipy's public `update` checks every key in a Python loop, seconds for a 100k-rating adjacency matrix;
        this checks the bounds once, vectorised, and then writes the dict directly.
        """
        if not data:
            return
        keys = np.fromiter((index for key in data for index in key), dtype=np.int64, count=2 * len(data))
        rows, cols = keys[0::2], keys[1::2]
        n_rows, n_cols = self.shape
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= n_rows or cols.max() >= n_cols:
            raise IndexError(f"dok_matrix._update: an index is out of bounds for shape {self.shape}")
        values = np.fromiter(data.values(), dtype=self.dtype, count=len(data))
        # Plain-int keys and values of the matrix dtype, as __setitem__ stores them, so that later lookups and
        # conversions see one key type.
        self._dict.update(zip(zip(rows.tolist(), cols.tolist(), strict=True), values, strict=True))

    sp.dok_matrix._update = _mark(_update)


# RecBole bug: Pop popularity counts -------------------------------------------------------------------------------


def _count_every_occurrence_in_pop() -> None:
    import torch
    from recbole.model.general_recommender.pop import Pop

    if _is_marked(Pop.calculate_loss):
        return

    def calculate_loss(self: Pop, interaction: Any) -> torch.Tensor:
        """Count the batch's items, each occurrence once, as `Pop` means to (1.2.1 counts each distinct item once)."""
        item = interaction[self.ITEM_ID]
        self.item_cnt.index_add_(0, item, torch.ones_like(item, dtype=self.item_cnt.dtype).unsqueeze(1))
        self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1)).to(self.device)

    Pop.calculate_loss = _mark(calculate_loss)


# 7. known, harmless warnings ----------------------------------------------------------------------------------------

# (category, message regex, module regex of the code that triggers it): why each is harmless is said above it.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # pandas 2.2: `df[col].fillna(..., inplace=True)` in RecBole's `_fill_nan` and `_fill_nan_flag` will stop
    # filling under pandas 3's copy-on-write; under pandas 2 (pinned below 3 in pyproject.toml) it still fills.
    (
        FutureWarning,
        r"A value is trying to be set on a copy of a DataFrame or Series through chained assignment",
        r"recbole\.",
    ),
    # pandas 2.1: `Series.agg(len)` on sequence fields (sequential models' item lists) is deprecated for
    # `transform`; in pandas 2 it still returns the per-row lengths RecBole expects.
    (FutureWarning, r"using <built-in function len> in Series\.agg cannot aggregate", r"recbole\."),
    # torch 2.4: `torch.cuda.amp.GradScaler(...)` is spelt `torch.amp.GradScaler("cuda", ...)` now; RecBole's
    # trainer builds one disabled on the CPU, so it scales nothing either way.
    (FutureWarning, r"`torch\.cuda\.amp\.\w+\(args\.\.\.\)` is deprecated", r"recbole\."),
    # torch: the legacy `torch.sparse.FloatTensor(i, v, shape)` constructor of LightGCN/NGCF's adjacency
    # matrix builds the same COO tensor as `torch.sparse_coo_tensor`.
    (UserWarning, r"torch\.sparse\.SparseTensor\(indices, values, shape", r"recbole\."),
)


def _quiet_known_warnings() -> None:
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
