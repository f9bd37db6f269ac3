"""Each RecBole 1.2.1 breakage on this stack, shown fixed by `patch_recbole()` (one test per fix, plus a real run).

Every test here fails on an unpatched RecBole: it uses exactly what breaks (numpy 2 aliases, ray's import, torch's
`weights_only` default, the Collector on non-tensor metrics, scipy's missing `dok_matrix._update`).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_assets.lib.models import recbole_compat
from recsys_assets.lib.models.recbole_compat import patch_recbole
from tests.conftest import ROOT


@pytest.fixture(scope="module", autouse=True)
def _patched() -> None:
    patch_recbole()


@pytest.fixture
def recbole_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory for RecBole's ./log and ./log_tensorboard, and the root logger restored afterwards."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield tmp_path
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _tiny_dataset(folder: Path, n_users: int = 30, n_items: int = 20, per_user: int = 10) -> Path:
    """A RecBole atomic dataset `tiny` under `folder`: every user has `per_user` distinct items."""
    rng = np.random.default_rng(7)
    (folder / "tiny").mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(n_users):
        for step, item in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            lines.append(f"{user}\t{item}\t{1_700_000_000 + 60 * step}")
    (folder / "tiny" / "tiny.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _recbole_run(folder: Path, model: str, **settings: object):
    """Config, data loaders, model and trainer for `model` on the tiny dataset, as RecBole's quick start builds them."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = Config(
        model=model,
        dataset="tiny",
        config_dict={
            "data_path": str(_tiny_dataset(folder)),
            "checkpoint_dir": str(folder / "saved"),
            "use_gpu": False,
            "show_progress": False,
            "epochs": 1,
            "embedding_size": 8,
            "train_batch_size": 256,
            "eval_batch_size": 256,
            **settings,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    recommender = get_model(model)(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, recommender)
    return config, dataset, (train_data, valid_data, test_data), recommender, trainer


def test_patch_recbole_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from recbole.evaluator.collector import Collector
    from recbole.model.general_recommender.pop import Pop
    from recbole.quick_start import quick_start
    from recbole.trainer.trainer import Trainer

    def installed() -> tuple[object, ...]:
        return (
            torch.load,
            Trainer.evaluate,
            Trainer.resume_checkpoint,
            quick_start.load_data_and_model,
            Collector.get_data_struct,
            sp.dok_matrix._update,
            Pop.calculate_loss,
            np.float_,
        )

    before = installed()
    # Force every step to run again, as if a second copy of the module patched: nothing may wrap a wrapper.
    monkeypatch.setattr(recbole_compat, "_patched", False)
    patch_recbole()
    assert installed() == before
    assert recbole_compat.recbole_is_patched()


# 1. numpy 2 aliases ------------------------------------------------------------------------------------------------


def test_numpy_aliases_are_restored_and_recbole_config_builds() -> None:
    from recbole.config import Config

    assert np.float_ is np.float64
    assert np.bool8 is np.bool_
    # Config() runs RecBole's own compatibility_settings, which reads np.float_, np.complex_ and np.unicode_.
    config = Config(model="BPR", dataset="ml-100k", config_dict={"use_gpu": False})
    assert config["model"] == "BPR"


def test_evaluator_metrics_run_without_a_config() -> None:
    # MRR, MAP and NDCG use np.float; RecBole only restores it when a Config is built
    from recbole.evaluator.metrics import MAP, MRR, NDCG

    hits = np.array([[False, True, False, True]])
    cfg = {"topk": [4], "metric_decimal_place": 4}
    assert MRR(cfg).metric_info(hits)[0, -1] == pytest.approx(0.5)
    assert NDCG(cfg).metric_info(hits, np.array([2]))[0, -1] == pytest.approx(
        (1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    )
    assert MAP(cfg).metric_info(hits, np.array([2]))[0, -1] == pytest.approx((1 / 2 + 2 / 4) / 2)


# 2. recbole.quick_start and ray ------------------------------------------------------------------------------------


def test_quick_start_imports_with_the_real_ray_tune() -> None:
    import ray.tune
    import recbole.quick_start
    from recbole.quick_start import quick_start

    assert quick_start.tune is ray.tune
    assert callable(recbole.quick_start.run_recbole)


def test_quick_start_imports_when_ray_cannot(tmp_path: Path) -> None:
    # A fresh interpreter: this one has imported ray already. Blocking pkg_resources is what setuptools >= 81 does.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pkg_resources"] = None
        try:
            import ray
        except ImportError:
            pass
        else:
            raise SystemExit("ray imported without pkg_resources: the failure is no longer simulated")

        from recsys_assets.lib.models.recbole_compat import patch_recbole
        patch_recbole()
        from recbole.quick_start import load_data_and_model, quick_start, run_recbole
        try:
            quick_start.tune.report(score=1.0)
        except ImportError as error:
            assert "ray.tune is unavailable" in str(error), error
        else:
            raise SystemExit("the placeholder tune did not raise")
        try:
            import ray
        except ImportError:
            print("OK")
        else:
            raise SystemExit("the placeholder ray leaked into sys.modules")
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("OK")


# 3. torch.load(weights_only=True) and RecBole checkpoints ----------------------------------------------------------


def test_recbole_loads_its_own_checkpoints(recbole_workdir: Path) -> None:
    import torch
    from recbole.quick_start import load_data_and_model

    _config, _dataset, (train_data, valid_data, test_data), model, trainer = _recbole_run(recbole_workdir, "BPR")
    trainer.fit(train_data, valid_data, saved=True, verbose=False)
    checkpoint = trainer.saved_model_file
    assert Path(checkpoint).is_file()

    # Outside RecBole's readers torch keeps its safe default, which refuses the pickled Config.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(checkpoint)

    result = trainer.evaluate(test_data, load_best_model=True)
    assert "ndcg@10" in result
    trainer.resume_checkpoint(checkpoint)
    assert trainer.start_epoch == 1

    _, loaded, *_ = load_data_and_model(checkpoint)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


# 4. Collector.get_data_struct on non-tensor metric inputs ----------------------------------------------------------


def test_item_coverage_and_average_popularity_evaluate(recbole_workdir: Path) -> None:
    from recbole.evaluator.collector import Collector

    metrics = ["Recall", "NDCG", "ItemCoverage", "AveragePopularity"]
    config, dataset, (train_data, valid_data, _test), _model, trainer = _recbole_run(
        recbole_workdir, "BPR", metrics=metrics, valid_metric="NDCG@10"
    )
    collector = Collector(config)
    collector.data_collect(train_data)
    struct = collector.get_data_struct()
    assert struct.get("data.num_items") == dataset.item_num  # an int, which has no .cpu()
    assert isinstance(struct.get("data.count_items"), dict)

    # fit() collects the training data into the trainer's own Collector, then validates through it.
    _score, result = trainer.fit(train_data, valid_data, saved=False, verbose=False)
    assert 0 < result["itemcoverage@10"] <= 1
    assert result["averagepopularity@10"] > 0


# 5. scipy dok_matrix._update ---------------------------------------------------------------------------------------


def test_dok_update_sets_entries_in_bulk() -> None:
    matrix = sp.dok_matrix((3, 4), dtype=np.float32)
    matrix._update({(0, 1): 1, (2, 3): 2.5, (np.int64(1), np.int32(0)): 1})
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[0, 1], expected[2, 3], expected[1, 0] = 1, 2.5, 1
    np.testing.assert_array_equal(matrix.toarray(), expected)
    assert matrix[1, 0] == 1 and matrix.nnz == 3
    with pytest.raises(IndexError):
        matrix._update({(3, 0): 1})


def test_lightgcn_builds_the_normalised_adjacency_matrix(recbole_workdir: Path) -> None:
    _config, _dataset, (train_data, *_), model, _trainer = _recbole_run(recbole_workdir, "LightGCN")
    interactions = train_data._dataset.inter_matrix(form="coo").astype(np.float32).toarray()
    n_users = interactions.shape[0]
    adjacency = np.zeros((n_users + interactions.shape[1],) * 2, dtype=np.float64)
    adjacency[:n_users, n_users:] = interactions > 0
    adjacency[n_users:, :n_users] = (interactions > 0).T
    degree = adjacency.sum(axis=1) + 1e-7
    expected = adjacency / np.sqrt(degree)[:, None] / np.sqrt(degree)[None, :]
    np.testing.assert_allclose(model.norm_adj_matrix.to_dense().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_lightgcn_trains_one_epoch_on_ml_100k(recbole_workdir: Path) -> None:
    """Fixes 1, 3, 4 and 5 together: LightGCN on MovieLens-100k, one epoch, with the non-tensor metrics."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = Config(
        model="LightGCN",
        dataset="ml-100k",
        config_dict={
            "epochs": 1,
            "use_gpu": False,
            "show_progress": False,
            "checkpoint_dir": str(recbole_workdir / "saved"),
            "metrics": ["Recall", "NDCG", "ItemCoverage", "AveragePopularity"],
            "valid_metric": "NDCG@10",
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    model = get_model("LightGCN")(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], "LightGCN")(config, model)
    trainer.fit(train_data, valid_data, saved=True, verbose=False)
    result = trainer.evaluate(test_data, load_best_model=True)
    # One epoch already beats popularity-free chance (NDCG@10 about 0.006 for random ranking) by far.
    assert result["ndcg@10"] > 0.05
    assert 0 < result["itemcoverage@10"] <= 1


# RecBole bug: Pop counts -------------------------------------------------------------------------------------------


def test_pop_counts_every_occurrence_whatever_the_batch_size(recbole_workdir: Path) -> None:
    """RecBole 1.2.1 counts an item once per batch; with one batch, every item would be equally popular."""
    import torch

    _config, _dataset, (train_data, *_), model, trainer = _recbole_run(
        recbole_workdir, "Pop", train_batch_size=100_000, train_neg_sample_args=None
    )
    trainer.fit(train_data, saved=False, verbose=False)
    items = train_data._dataset.inter_feat[train_data._dataset.iid_field]
    expected = torch.bincount(items, minlength=train_data._dataset.item_num)
    assert torch.equal(model.item_cnt.view(-1), expected)
    assert model.max_cnt.item() == expected.max().item() > 1


def test_known_warnings_are_quiet_only_where_recbole_raises_them() -> None:
    import warnings

    from recsys_assets.lib.models import recbole_compat

    chained = (
        "A value is trying to be set on a copy of a DataFrame or Series through chained assignment using an inplace"
    )
    scaler = "`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)`"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        recbole_compat._quiet_known_warnings()

        def warn(message: str, category: type[Warning], module: str) -> None:
            warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)

        warn(chained, FutureWarning, "recbole.data.dataset.dataset")
        warn(scaler, FutureWarning, "recbole.trainer.trainer")
        warn("using <built-in function len> in Series.agg cannot aggregate", FutureWarning, "recbole.data.x")
        # the same message from the project's own code, and anything else from RecBole, still show
        warn(chained, FutureWarning, "recsys_assets.lib.models.fitting")
        warn("something new", FutureWarning, "recbole.data.dataset.dataset")
        warn(chained, DeprecationWarning, "recbole.data.dataset.dataset")
    shown = [(str(w.message)[:14], w.category.__name__) for w in seen]
    assert shown == [
        ("A value is try", "FutureWarning"),
        ("something new", "FutureWarning"),
        ("A value is try", "DeprecationWarning"),
    ]
