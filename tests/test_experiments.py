"""End to end on a few hundred real faces: train, resume, evaluate, k-fold, and the scripts' errors."""

import dataclasses
import functools
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from ferjax import checkpoint, configs, data, evaluate, inference, kfold, loop, models, train
from ferjax.configs import ConfigError
from ferjax.models.stn import LOCALIZATION_NET
from ferjax.summary import SummaryWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script_env(fer2013_dir: str) -> dict:
    """For `python -m experiments.<script>` run from another folder: the repo on the path, the data set."""
    return {**os.environ, "FER2013_DIR": fer2013_dir, "PYTHONPATH": REPO}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_fer2013):
    """One epoch of a tiny attention model: 320 train faces, batch 32 -> 10 steps."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = configs.tiny_config(model="_tiny_stn_deep", shift=2, epochs=1, batch_size=32)
    metrics = loop.train_and_evaluate(config, workdir, dataset=small_fer2013, log_every_steps=5, track_test=True)
    return workdir, config, metrics


def test_run_writes_checkpoints_metrics_and_plots(trained):
    workdir, _, metrics = trained
    for name in ("metrics.json", "history.csv", "history.png", "confusion_matrix.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert saved["test_metrics"]["count"] == 96 and saved["val_metrics"]["count"] == 96  # every face once
    assert np.sum(saved["test_metrics"]["confusion_matrix"]) == 96
    assert 0 <= saved["test_accuracy"] <= 1 and saved["best_epoch"] == 1
    assert saved["history"][0]["test_accuracy"] == pytest.approx(saved["test_accuracy"])  # the same (only) checkpoint
    for key in ("val_accuracy", "test_accuracy_flip_tta", "macro_f1", "wall_time_s", "device", "commit", "command"):
        assert key in saved or key in saved["test_metrics"]
    state, meta = checkpoint.load(workdir)
    assert int(state.step) == 10 and meta["config"]["model"] == "_tiny_stn_deep"
    assert meta["class_names"][0] == "angry" and state.mean_image.shape == (48, 48)


def test_event_files_read_back_with_tensorboard(trained):
    workdir, config, _ = trained
    events = EventAccumulator(workdir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/accuracy", "train/learning_rate", "train/img_per_s", "val/loss", "val/accuracy",
                "test/accuracy"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10]
    for tag in ("train/augmented_inputs", "stn/input_and_warped", "test/confusion_matrix"):
        assert tag in tags["images"], tag
    assert events.Images("stn/input_and_warped")[0].width > 48
    # The HParams dashboard's record of the run: its settings.
    settings = _hparams(events)
    assert settings["model"].string_value == config.model and settings["shift"].number_value == config.shift
    assert settings["learning_rate"].number_value == pytest.approx(config.learning_rate)


def _hparams(events: EventAccumulator) -> dict:
    (content,) = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME).values()
    return hparams_metadata.parse_session_start_info_plugin_data(content).hparams


def test_hparams_join_sequences_and_leave_out_none(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    writer.hparams({"widths": (8, 16), "ema": None, "flip": True})
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    settings = _hparams(events)
    assert set(settings) == {"widths", "flip"}
    assert settings["widths"].string_value == "8,16" and settings["flip"].bool_value


def test_resume_continues_at_the_saved_step(trained, small_fer2013, tmp_path):
    workdir, config, _ = trained
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(workdir, resumed_dir)
    longer = configs.tiny_config(**{**config.__dict__, "epochs": 2})
    with pytest.raises(ConfigError, match="holds checkpoints already; pass --resume"):
        loop.train_and_evaluate(longer, str(resumed_dir), dataset=small_fer2013)
    metrics = loop.train_and_evaluate(longer, str(resumed_dir), dataset=small_fer2013, resume=True)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert [h["step"] for h in metrics["history"]] == [10, 20]
    assert ["test_accuracy" in h for h in metrics["history"]] == [True, False]  # tracked in the first run only
    state, _ = checkpoint.load(str(resumed_dir / "checkpoints" / "latest"))
    assert int(state.step) == 20


def test_resumed_run_counts_the_wall_time_of_the_calls_before_it(trained, small_fer2013, tmp_path):
    workdir, config, _ = trained
    shutil.copytree(workdir, tmp_path / "run")
    # As if the first call had taken 1000 s: the resumed call's times must go on from there.
    history_path = tmp_path / "run" / "history.csv"
    history = loop._read_history(str(history_path))
    loop._write_history(str(history_path), [{**history[0], "wall_time": 1000.0}])
    call_start = time.time()
    metrics = loop.train_and_evaluate(configs.tiny_config(**{**config.__dict__, "epochs": 2}), str(tmp_path / "run"),
                                      dataset=small_fer2013, resume=True)
    call_s = time.time() - call_start
    first, second = (h["wall_time"] for h in metrics["history"])
    assert first == 1000.0 and first < second <= metrics["wall_time_s"] <= first + call_s


def test_resume_names_the_flags_that_change_the_state_layout(trained, small_fer2013, tmp_path):
    workdir, config, _ = trained
    shutil.copytree(workdir, tmp_path / "run")
    averaged = configs.tiny_config(**{**config.__dict__, "epochs": 2, "ema": 0.9})
    with pytest.raises(checkpoint.CheckpointError, match=r"cannot resume this run \(flags changed since it was "
                                                         r"saved: --epochs, --ema\)"):
        loop.train_and_evaluate(averaged, str(tmp_path / "run"), dataset=small_fer2013, resume=True)


def test_resume_without_a_checkpoint_starts_afresh_and_says_where_it_looked(small_fer2013, tmp_path, caplog):
    workdir = tmp_path / "never_trained"
    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        metrics = loop.train_and_evaluate(configs.tiny_config(epochs=1), str(workdir), dataset=small_fer2013,
                                          resume=True)
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert any(record.getMessage().startswith("--resume: no checkpoint in") and str(workdir) in record.getMessage()
               for record in caplog.records), caplog.text


def test_time_limit_stops_between_epochs_and_reports_the_best_so_far(small_fer2013, tmp_path):
    config = configs.tiny_config(epochs=5)
    metrics = loop.train_and_evaluate(config, str(tmp_path), dataset=small_fer2013, time_limit_s=1e-3)
    # Past the limit after the first epoch: no second one starts, and the run still reports in full.
    assert metrics["stopped_after_epoch"] == 1 and len(metrics["history"]) == 1 and metrics["epochs"] == 5
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["test_accuracy"] == metrics["test_accuracy"]
    unlimited = loop.train_and_evaluate(configs.tiny_config(epochs=2), str(tmp_path / "free"), dataset=small_fer2013,
                                        time_limit_s=3600)
    assert "stopped_after_epoch" not in unlimited and len(unlimited["history"]) == 2


def test_resumed_weight_average_matches_an_uninterrupted_run(small_fer2013, tmp_path):
    """The average is part of the saved state, so stopping after epoch 1 and resuming changes nothing."""
    two_epochs = configs.tiny_config(ema=0.9, epochs=2, batch_size=32)
    loop.train_and_evaluate(two_epochs, str(tmp_path / "whole"), dataset=small_fer2013)
    loop.train_and_evaluate(configs.tiny_config(**{**two_epochs.__dict__, "epochs": 1}), str(tmp_path / "split"),
                            dataset=small_fer2013)
    loop.train_and_evaluate(two_epochs, str(tmp_path / "split"), dataset=small_fer2013, resume=True)
    # `load` swaps the average (weights and batch-norm statistics) in for evaluation.
    whole, split = (checkpoint.load(str(tmp_path / run / "checkpoints" / "latest"))[0] for run in ("whole", "split"))
    assert int(whole.step) == int(split.step) == 20
    for a, b in zip(jax.tree.leaves((whole.params, whole.batch_stats)),
                    jax.tree.leaves((split.params, split.batch_stats)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_crop_run_reports_ten_crop_and_reloads_its_window(small_fer2013, tmp_path):
    config = configs.tiny_config(crop=40, epochs=1, batch_size=32)
    metrics = loop.train_and_evaluate(config, str(tmp_path), dataset=small_fer2013)
    state, _ = checkpoint.load(str(tmp_path))
    assert state.crop == 40
    tencrop = evaluate.evaluate_checkpoints([str(tmp_path)], small_fer2013, "test", tta="tencrop")
    assert tencrop["accuracy"] == metrics["test_accuracy_tencrop_tta"]
    assert evaluate.evaluate_checkpoints([str(tmp_path)], small_fer2013, "val")["accuracy"] == metrics["val_accuracy"]


def test_weight_average_is_what_the_run_selects_on_and_loads(small_fer2013, tmp_path):
    config = configs.tiny_config(ema=0.9, epochs=1, batch_size=32)
    metrics = loop.train_and_evaluate(config, str(tmp_path), dataset=small_fer2013)
    state, meta = checkpoint.load(str(tmp_path))
    with checkpoint.manager(str(tmp_path / "checkpoints" / "best"), best=True) as best:
        saved = checkpoint.restore_state(best, best.latest_step(), checkpoint.abstract_state(meta))
    assert state.averaged is None and saved.averaged is not None
    for loaded, averaged in zip(jax.tree.leaves(state.params), jax.tree.leaves(saved.averaged["params"])):
        np.testing.assert_array_equal(loaded, averaged)
    assert evaluate.evaluate_checkpoints([str(tmp_path)], small_fer2013, "val")["accuracy"] == metrics["val_accuracy"]


def test_an_asynchronous_save_keeps_the_state_it_was_given_while_training_donates_it(small_fer2013, tmp_path):
    config = configs.tiny_config(batch_size=32)
    model = models.create(config.model, **config.model_kwargs())
    state = train.create_train_state(jax.random.key(0), model, config, mean_image=np.zeros((48, 48)),
                                     steps_per_epoch=1)
    step = jax.jit(functools.partial(train.train_step, config=config), donate_argnums=0)
    batch = next(data.batches(small_fer2013.train, 32, shuffle_seed=(0, 0)))
    saved = jax.tree.map(np.array, state.params)
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 1, state, {"config": {}})
        for i in range(3):  # the saved buffers are donated and overwritten while the files are written
            state, _ = step(state, batch, jax.random.key(i), ())
        mngr.wait_until_finished()
        restored = checkpoint.restore_state(mngr, 1, state)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(saved))]
    assert any(changed)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(a, b)


def test_checkpoints_from_before_the_weight_average_still_load(trained, tmp_path):
    """A state saved whole by orbax, in the layout TrainState had before its `averaged` field."""
    from typing import Any

    import orbax.checkpoint as ocp
    from flax.training import train_state

    class EarlierTrainState(train_state.TrainState):
        batch_stats: Any
        mean_image: Any
        class_weights: Any

    workdir, _, _ = trained
    state, meta = checkpoint.load(workdir)
    earlier = EarlierTrainState(step=state.step, apply_fn=None, params=state.params, tx=None,
                                opt_state=state.opt_state, batch_stats=state.batch_stats,
                                mean_image=state.mean_image, class_weights=state.class_weights)
    with checkpoint.manager(str(tmp_path)) as mngr:
        mngr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(earlier), meta=ocp.args.JsonSave(meta)))
    loaded, _ = checkpoint.load(str(tmp_path))
    assert int(loaded.step) == int(state.step) and loaded.averaged is None
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_a_run_learns_from_teachers_that_see_its_inputs(trained, small_fer2013, tmp_path):
    teacher_dir, _, _ = trained
    config = configs.tiny_config(distill_from=(teacher_dir, teacher_dir), distill_weight=0.7, erase=0.5)
    metrics = loop.train_and_evaluate(config, str(tmp_path / "student"), dataset=small_fer2013, log_every_steps=5)
    assert np.isfinite(metrics["history"][-1]["train_loss"])
    assert metrics["config"]["distill_from"] == (teacher_dir, teacher_dir)
    teacher, meta = inference.load_model(teacher_dir)
    assert metrics["teachers"] == 2 * [{"path": teacher_dir, "fingerprint": inference.weights_fingerprint(teacher),
                                        "commit": meta["commit"], "command": meta["command"]}]
    with pytest.raises(ConfigError, match=r"--distill_from=.*trained with --crop=0, this run has --crop=40"):
        loop.load_teachers(configs.tiny_config(crop=40, distill_from=(teacher_dir,)))
    with pytest.raises(checkpoint.CheckpointError, match="--distill_from: /no/such/run: no such checkpoint"):
        loop.load_teachers(configs.tiny_config(distill_from=("/no/such/run",)))
    with pytest.raises(checkpoint.CheckpointError, match="--distill_from: an empty path names no model"):
        loop.load_teachers(configs.tiny_config(distill_from=(teacher_dir, "")))  # --distill_from=a,


def _trunk_of(workdir: str, path: str) -> str:
    """Exports the trunk and head of the attention model in `workdir` as a plain `_tiny_cnn` at `path`."""
    state, meta = checkpoint.load(workdir)
    state = state.replace(params={k: v for k, v in state.params.items() if k != LOCALIZATION_NET},
                          batch_stats={k: v for k, v in state.batch_stats.items() if k != LOCALIZATION_NET})
    inference.export_model(state, {**meta, "config": {**meta["config"], "model": "_tiny_cnn"}}, path, np.float32)
    return path


def test_an_attention_model_starts_from_a_trained_cnn_and_predicts_as_it_does(trained, small_fer2013, tmp_path):
    cnn_path = _trunk_of(trained[0], str(tmp_path / "cnn"))
    cnn, cnn_meta = inference.load_model(cnn_path)
    config = configs.tiny_config(model="_tiny_stn_deep", init_from=cnn_path)
    fresh = train.create_train_state(jax.random.key(1), models.create("_tiny_stn_deep"), config,
                                     mean_image=np.asarray(cnn.mean_image), steps_per_epoch=1)
    started, record = loop.warm_start(fresh, config)
    assert record == {"path": cnn_path, "fingerprint": inference.weights_fingerprint(cnn),
                      "commit": cnn_meta["commit"], "command": cnn_meta["command"]}
    for a, b in zip(jax.tree.leaves(started.params["convs"]), jax.tree.leaves(cnn.params["convs"]), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(started.params[LOCALIZATION_NET]),
                    jax.tree.leaves(fresh.params[LOCALIZATION_NET]), strict=True):
        np.testing.assert_array_equal(a, b)
    # The localisation net starts at the identity warp, so the warm-started model computes what the CNN does.
    batch = {"image": small_fer2013.val.images[:32]}
    np.testing.assert_allclose(train.predict_logits(started, batch), train.predict_logits(cnn, batch), atol=1e-4)

    metrics = loop.train_and_evaluate(config, str(tmp_path / "run"), dataset=small_fer2013, log_every_steps=5)
    assert metrics["init_from"] == record and metrics["config"]["init_from"] == cnn_path
    # Resuming reads the record from the checkpoint: the starting model need not be there any more.
    os.rename(cnn_path + ".msgpack", cnn_path + ".moved")
    resumed = loop.train_and_evaluate(dataclasses.replace(config, epochs=2), str(tmp_path / "run"),
                                      dataset=small_fer2013, log_every_steps=5, resume=True)
    assert resumed["init_from"] == record and len(resumed["history"]) == 2
    os.rename(cnn_path + ".moved", cnn_path + ".msgpack")

    with pytest.raises(ConfigError, match=rf"--init_from={trained[0]}: params/stn_loc/.* has no place in this model"):
        loop.warm_start(train.create_train_state(jax.random.key(1), models.create("_tiny_cnn"), config,
                                                 mean_image=np.zeros((48, 48)), steps_per_epoch=1),
                        configs.tiny_config(init_from=trained[0]))
    with pytest.raises(ConfigError, match=rf"--init_from={cnn_path}: params/convs/bn1_1/bias has shape "
                                          r"\(4,\), this model's \(6,\)"):
        wider = configs.tiny_config(widths=(6, 8), init_from=cnn_path)
        loop.warm_start(train.create_train_state(jax.random.key(1), models.create("_tiny_cnn", widths=(6, 8)), wider,
                                                 mean_image=np.zeros((48, 48)), steps_per_epoch=1), wider)
    with pytest.raises(ConfigError, match=r"--init_from=.*trained with --crop=0, this run has --crop=40"):
        loop.warm_start(fresh, configs.tiny_config(crop=40, init_from=cnn_path))
    with pytest.raises(checkpoint.CheckpointError, match="--init_from: /no/such/run: no such checkpoint"):
        loop.warm_start(fresh, configs.tiny_config(init_from="/no/such/run"))
    with pytest.raises(ConfigError, match="--init_from='': name a workdir"):
        configs.tiny_config(init_from="")


def test_a_hog_model_cannot_teach(trained, monkeypatch):
    teacher_dir, _, _ = trained
    state, meta = inference.load_model(teacher_dir)
    monkeypatch.setattr(inference, "load_model", lambda path: (state, {**meta, "hog_dim": 900}))
    with pytest.raises(ConfigError, match="--distill_from=.*: a HOG model cannot teach"):
        loop.load_teachers(configs.tiny_config(distill_from=(teacher_dir,)))


def test_non_finite_loss_stops_with_a_clear_error(small_fer2013, tmp_path):
    config = configs.tiny_config(learning_rate=1e30, batch_size=32)
    with pytest.raises(loop.TrainingError, match="non-finite loss at step"):
        loop.train_and_evaluate(config, str(tmp_path), dataset=small_fer2013, log_every_steps=1)


def test_evaluate_with_tta_and_ensembles(trained, small_fer2013, tmp_path):
    workdir, _, metrics = trained
    single = evaluate.evaluate_checkpoints([workdir], small_fer2013, "test")
    assert single["accuracy"] == metrics["test_accuracy"]
    flip = evaluate.evaluate_checkpoints([workdir], small_fer2013, "test", tta="flip")
    assert flip["accuracy"] == metrics["test_accuracy_flip_tta"]
    tencrop = evaluate.evaluate_checkpoints([workdir], small_fer2013, "test", tta="tencrop")
    assert tencrop["count"] == 96
    twice = evaluate.evaluate_checkpoints([workdir, workdir], small_fer2013, "test")
    assert twice["accuracy"] == single["accuracy"] and len(twice["members"]) == 2
    exported = str(tmp_path / "exported")
    inference.export_model(*checkpoint.load(workdir), exported, np.float32)
    assert evaluate.evaluate_checkpoints([exported], small_fer2013, "test")["accuracy"] == single["accuracy"]
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        evaluate.evaluate_checkpoints([workdir + "_missing"], small_fer2013)
    with pytest.raises(checkpoint.CheckpointError, match="an empty path names no model"):
        evaluate.evaluate_checkpoints([""], small_fer2013)  # not the bundled model


def test_greedy_ensemble_keeps_the_most_accurate_of_its_nested_ensembles():
    labels = np.array([0, 0, 1, 1])
    always_wrong = np.array([[.3, .7], [.3, .7], [.8, .2], [.8, .2]])  # 0/4
    a = np.array([[.9, .1], [.9, .1], [.6, .4], [.2, .8]])  # 3/4, misses face 2
    b = np.array([[.4, .6], [.6, .4], [.1, .9], [.4, .6]])  # 3/4, misses face 0; with a: 4/4
    assert evaluate.greedy_ensemble([always_wrong, a, b], labels) == [1, 2]  # a before b: the tie goes to the first
    assert evaluate.greedy_ensemble([a, a, always_wrong], labels) == [0]  # a copy adds nothing: the smaller kept

    def binary(p_first):
        return np.stack([np.array(p_first), 1 - np.array(p_first)], axis=-1)

    labels = np.array([0, 0, 1, 1, 1])
    x = binary([.6, .1, .1, .1, .3])  # 4/5
    y = binary([.6, .8, .6, .6, .8])  # 2/5; with x: 3/5
    z = binary([.3, .6, .6, .1, .1])  # 3/5; with x: 3/5; with x and y: 5/5
    assert evaluate.greedy_ensemble([x, y, z], labels) == [0, 1, 2]  # past the step that lowers accuracy


def test_evaluate_script_selects_the_ensemble_on_val(trained, tmp_path, fer2013_dir):
    workdir, _, _ = trained
    exported = str(tmp_path / "exported")  # the same weights: adding the workdir to it adds nothing
    inference.export_model(*checkpoint.load(workdir), exported, np.float32)
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--checkpoint={exported}",
                             f"--checkpoint={workdir}", "--select_on_val", "--limit=70"],
                            cwd=tmp_path, capture_output=True, text=True, env=_script_env(fer2013_dir), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "model 2/2" in result.stderr  # progress: one line per model and split
    with open(tmp_path / "exported_eval_test_none.json") as f:  # by default, named after the exported model
        saved = json.load(f)
    assert saved["selection"]["chosen"] == [exported] and len(saved["selection"]["candidates"]) == 2
    assert [m["path"] for m in saved["members"]] == [exported] and saved["split"] == "test" and saved["count"] == 70


def test_evaluate_script_names_a_missing_model_before_it_reads_the_data(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={tmp_path / 'typo'}",
                             "--data_dir=/no/such/dir"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'typo'}: no such checkpoint or workdir"


def test_export_ships_the_best_val_storage_that_fits_the_budget(trained, fer2013, fer2013_dir, tmp_path):
    workdir, config, _ = trained
    state, meta = checkpoint.load(workdir)
    sizes = {name: os.path.getsize(inference.export_model(state, meta, str(tmp_path / name), name)[0])
             for name in ("float16", "float32")}
    output = tmp_path / "exported"

    def export(max_mb: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "scripts/export_model.py", f"--workdir={workdir}", f"--output={output}",
                               f"--max_mb={max_mb}"], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "FER2013_DIR": fer2013_dir}, timeout=300)

    result = export((sizes["float16"] + sizes["float32"]) / 2e6)  # float32 is over this budget
    assert result.returncode == 0, result.stderr
    with open(f"{output}.json") as f:
        card = json.load(f)["card"]
    assert card["storage"] == "float16" and os.path.getsize(f"{output}.msgpack") == sizes["float16"]
    exported = inference.load_model(str(output))[0]
    probs = evaluate.predict_split(exported, fer2013.val, 500, standardize=config.standardize)
    assert card["val_accuracy_exported"] == evaluate.metrics_from_probs(fer2013.val.labels, probs)["accuracy"]
    assert card["fingerprint"] == inference.weights_fingerprint(exported)

    result = export(sizes["float16"] / 2e6)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: --max_mb=") and "no storage fits" in result.stderr


def test_kfold_search_and_resumability(small_fer2013, tmp_path):
    grid = kfold.parse_grid("learning_rate=1e-3,3e-3")
    assert grid == [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}]
    base = configs.tiny_config(batch_size=32, limit_train=120)
    for c, k in kfold.tasks(grid, 2):
        kfold.run_fold(base, grid[c], c, k, 2, small_fer2013, str(tmp_path))
    rows = kfold.summarize(grid, 2, str(tmp_path))
    assert [r["folds_done"] for r in rows] == [2, 2]
    # Equal settings make one row in TensorBoard's HParams dashboard: a configuration's folds, their metrics averaged.
    fold_settings = {}
    for c, k in kfold.tasks(grid, 2):
        events = EventAccumulator(str(tmp_path / f"config{c:02d}" / f"fold{k}"))
        events.Reload()
        fold_settings[c, k] = dict(_hparams(events))
    assert fold_settings[0, 0] == fold_settings[0, 1] != fold_settings[1, 0] == fold_settings[1, 1]
    with open(tmp_path / "config00" / "fold0" / "metrics.json") as f:
        fold_metrics = json.load(f)
    assert fold_metrics["val_metrics"]["count"] == 60 and "test_accuracy" not in fold_metrics
    stamp = os.path.getmtime(tmp_path / "config00" / "fold0" / "metrics.json")
    kfold.run_fold(base, grid[0], 0, 0, 2, small_fer2013, str(tmp_path))  # finished: not rerun
    assert os.path.getmtime(tmp_path / "config00" / "fold0" / "metrics.json") == stamp
    csv_path, md_path = kfold.write_tables(rows, str(tmp_path))
    assert "learning_rate=0.003" in open(md_path).read() and os.path.getsize(csv_path) > 0
    assert kfold.best_overrides(rows, grid) in grid
    with pytest.raises(ConfigError, match="--grid"):
        kfold.parse_grid("learning_rat=1")
    with pytest.raises(ConfigError, match="is not a float"):
        kfold.parse_grid("learning_rate=fast")
    with pytest.raises(ConfigError, match="--distill_from: not in cross-validation"):
        kfold.run_fold(configs.tiny_config(distill_from=("runs/a",)), {}, 0, 0, 2, small_fer2013, str(tmp_path / "kd"))
    with pytest.raises(ConfigError, match="--init_from: not in cross-validation"):
        kfold.run_fold(configs.tiny_config(init_from="runs/a"), {}, 0, 0, 2, small_fer2013, str(tmp_path / "kd"))


def test_kfold_retrain_before_every_fold_is_done_says_so_and_trains_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.kfold", f"--workdir={tmp_path}", "--folds=2",
                             "--grid=dropout=0.3,0.5", "--summarize_only", "--retrain"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--retrain: 4 fold(s) not finished" in result.stdout
    assert "| config01 | dropout=0.5 | 0 | - |" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "best_retrained").exists()


@pytest.mark.parametrize("args,message", [
    (["--model=vgg99"], "--model='vgg99': unknown model"),
    (["--model=stn", "--learning_rate=-1"], "--learning_rate=-1.0: must be positive"),
    (["--model=stn", "--limit_train=20", "--batch_size=64"], "--batch_size=64: larger than the 20 training faces"),
    (["--model=stn", "--data_dir=/no/such/dir"], "FER2013 not found at /no/such/dir"),
    (["--model=stn", "--time_limit_minutes=0"], "--time_limit_minutes=0.0: must be positive"),
    (["--model=stn", "stn"], "unexpected arguments: stn (flags take the form --name=value"),
    (["--model=stn", "--distill_from=/no/run", "--data_dir=/no/dir"], "--distill_from: /no/run: no such checkpoint"),
    (["--model=stn", "--init_from=/no/run", "--data_dir=/no/dir"], "--init_from: /no/run: no such checkpoint"),
    (["--model=stn", "--distill_from=/a", "--distill_from=/b"], "--distill_from given 2 times, and only the last"),
])
def test_train_script_rejects_bad_input_in_one_line(args, message, tmp_path, fer2013_dir):
    result = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}", *args],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "FER2013_DIR": fer2013_dir},
                            timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_visualize_writes_non_empty_images(trained, small_fer2013, tmp_path):
    from PIL import Image

    from ferjax import visualize

    workdir, _, _ = trained
    state, _ = checkpoint.load(workdir)
    faces = visualize.faces_per_class(small_fer2013.val, 1)
    assert sorted(faces.labels.tolist()) == list(range(7))
    written = visualize.write_all(state, faces, str(tmp_path / "vis"))
    names = {os.path.basename(p) for p in written}
    assert {"first_layer_filters.png", "attention.png", "saliency.png",
            "feature_maps_convs_relu1_1.png", "feature_maps_convs_relu2_1.png"} <= names
    for path in written:
        pixels = np.asarray(Image.open(path).convert("L"))
        assert pixels.shape[0] > 50 and pixels.std() > 5  # a real picture, not a blank canvas
    saliency = visualize.saliency(state, faces.images, faces.labels)
    assert saliency.shape == faces.images.shape and saliency.max() > 0


def test_attention_statistics_read_theta_and_live_units_exactly(small_fer2013):
    from ferjax import preprocess, visualize

    config = configs.tiny_config(model="stn")
    state = train.create_train_state(jax.random.key(0), models.create("stn"), config, steps_per_epoch=1,
                                     mean_image=preprocess.training_mean(small_fer2013.train.images))
    loc = state.params["stn_loc"]

    def with_loc(theta_bias, hidden_sign):
        # theta's kernel starts at zero, so theta is its bias for every face; the hidden layer's inputs are
        # ReLU outputs (>= 0), so the sign of its kernel decides whether each unit fires.
        dense = {**loc["Dense_0"], "kernel": hidden_sign * jnp.abs(loc["Dense_0"]["kernel"])}
        params = {**state.params, "stn_loc": {**loc, "Dense_0": dense, "theta": {**loc["theta"], "bias": theta_bias}}}
        return state.replace(params=params)

    # Sample 0.8 of the width and 0.5 of the height, 0.25 right of centre and 0.125 above it.
    warp = jnp.array([0.8, 0.0, 0.25, 0.0, 0.5, -0.125])
    stats = visualize.attention_statistics(with_loc(warp, 1), small_fer2013.val.images, batch_size=40)
    assert stats["faces"] == len(small_fer2013.val) == 96  # three chunks: 40, 40, 16
    area = stats["area_scale"]
    assert area["min"] == pytest.approx(0.4) and area["max"] == pytest.approx(0.4)
    np.testing.assert_allclose(stats["shift_px"]["mean"], [6.0, -3.0], rtol=1e-6)  # x 0.25 * 24, y -0.125 * 24
    np.testing.assert_allclose(stats["shift_px"]["std"], [0, 0], atol=1e-9)
    assert stats["theta_std"] == pytest.approx(0, abs=1e-9)
    assert stats["live_units"] == stats["units"] == 32
    assert visualize.attention_statistics(with_loc(warp, -1), small_fer2013.val.images)["live_units"] == 0

    plain = configs.tiny_config()
    cnn_state = train.create_train_state(jax.random.key(0), models.create(plain.model, **plain.model_kwargs()),
                                         plain, steps_per_epoch=1, mean_image=state.mean_image)
    assert visualize.attention_statistics(cnn_state, small_fer2013.val.images) is None


def test_translation_profile_scores_the_faces_the_moved_sampler_sees(small_fer2013):
    from ferjax import visualize

    config = configs.tiny_config(model="stn")
    # A zero mean face: then the sampler's zero padding is what a black border in the image gives.
    state = train.create_train_state(jax.random.key(0), models.create("stn"), config, steps_per_epoch=1,
                                     mean_image=np.zeros((48, 48), np.float32))
    faces = small_fer2013.val
    profile = visualize.translation_profile(state, faces, offsets_px=(0.0, 1.0, -2.0), batch_size=40)

    def scores(images):
        batch = {"image": images, "label": faces.labels, "mask": np.ones(len(faces), np.float32)}
        sums = train.eval_step(state, batch)
        return float(sums["correct"] / len(faces)), float(sums["loss_sum"] / len(faces))

    # theta's kernel starts at zero and its bias at the identity, so the initial net samples every face
    # unmoved: +1 px along x shows each face one pixel to the left, -2 px along y two pixels lower.
    black = np.zeros_like(faces.images)
    left_1 = np.concatenate([faces.images[:, :, 1:], black[:, :, :1]], axis=2)
    down_2 = np.concatenate([black[:, :2], faces.images[:, :-2]], axis=1)
    expected = {"x": [scores(faces.images), scores(left_1)], "y": [scores(faces.images), None, scores(down_2)]}
    assert profile["faces"] == len(faces) and profile["offsets_px"] == [0.0, 1.0, -2.0]
    for axis, references in expected.items():
        for i, reference in enumerate(references):
            if reference is not None:
                accuracy, loss = reference
                assert profile[axis]["accuracy"][i] == pytest.approx(accuracy, abs=1 / len(faces))
                assert profile[axis]["loss"][i] == pytest.approx(loss, rel=1e-4)
    assert profile["x"]["loss"][1] != pytest.approx(profile["x"]["loss"][0], rel=1e-4)  # the move is seen

    plain = configs.tiny_config()
    cnn_state = train.create_train_state(jax.random.key(0), models.create(plain.model, **plain.model_kwargs()),
                                         plain, steps_per_epoch=1, mean_image=state.mean_image)
    assert visualize.translation_profile(cnn_state, faces) is None


def _stn_answering(theta_2x3, train_split: data.Split) -> train.TrainState:
    """A fresh `stn` whose theta is theta_2x3 for every face: theta's kernel starts at zero, so its bias is theta."""
    from ferjax import preprocess

    state = train.create_train_state(jax.random.key(0), models.create("stn"), configs.tiny_config(model="stn"),
                                     steps_per_epoch=1, mean_image=preprocess.training_mean(train_split.images))
    loc = state.params["stn_loc"]
    bias = jnp.asarray(theta_2x3, jnp.float32).reshape(6)
    return state.replace(params={**state.params, "stn_loc": {**loc, "theta": {**loc["theta"], "bias": bias}}})


def _assert_scores_match_eval_step(profile: dict, state, faces: data.Split, images_per_setting, hog_of=None) -> None:
    for i, images in enumerate(images_per_setting):
        batch = {"image": images, "label": faces.labels, "mask": np.ones(len(faces), np.float32)}
        if hog_of is not None:  # eval_step reads the mirror's features only for flip TTA
            batch["hog"] = batch["hog_flipped"] = hog_of(images)
        sums = train.eval_step(state, batch)
        assert profile["accuracy"][i] == pytest.approx(float(sums["correct"]) / len(faces), abs=1 / len(faces))
        assert profile["loss"][i] == pytest.approx(float(sums["loss_sum"]) / len(faces), rel=1e-4)


def test_tilt_profile_scores_the_turned_faces_and_reads_the_rotation_theta_answers_with(small_fer2013):
    from ferjax import visualize

    angle = np.deg2rad(15)
    state = _stn_answering([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0]],
                           small_fer2013.train)
    faces = small_fer2013.val
    profile = visualize.tilt_profile(state, faces, degrees=(0.0, 90.0), batch_size=40)

    assert profile["faces"] == len(faces) and profile["degrees"] == [0.0, 90.0]
    np.testing.assert_allclose(profile["theta_degrees"]["mean"], [15, 15], rtol=1e-5)
    np.testing.assert_allclose(profile["theta_degrees"]["std"], [0, 0], atol=1e-4)
    _assert_scores_match_eval_step(profile, state, faces, [faces.images, np.rot90(faces.images, 1, axes=(1, 2))])
    assert profile["loss"][1] != pytest.approx(profile["loss"][0], rel=1e-4)  # the turn is seen

    plain = configs.tiny_config()
    cnn_state = train.create_train_state(jax.random.key(0), models.create(plain.model, **plain.model_kwargs()),
                                         plain, steps_per_epoch=1, mean_image=state.mean_image)
    cnn_profile = visualize.tilt_profile(cnn_state, faces, degrees=(-10.0,))
    assert len(cnn_profile["accuracy"]) == 1 and "theta_degrees" not in cnn_profile


def test_profiles_give_a_hog_model_the_features_of_the_warped_faces(small_fer2013):
    from ferjax import features, preprocess, visualize

    config = configs.tiny_config(model="_tiny_hog")
    state = train.create_train_state(jax.random.key(0), models.create(config.model), config, steps_per_epoch=1,
                                     mean_image=preprocess.training_mean(small_fer2013.train.images), hog_dim=900)
    faces = small_fer2013.val
    profile = visualize.zoom_profile(state, faces, hog_of=features.hog_features, factors=(1.0, 1.5), batch_size=40)
    _assert_scores_match_eval_step(profile, state, faces, [faces.images, preprocess.zoom(faces.images, 1.5)],
                                   hog_of=features.hog_features)
    assert "theta_zoom" not in profile


def test_zoom_profile_scores_the_zoomed_faces_and_reads_the_magnification_theta_answers_with(small_fer2013):
    from ferjax import preprocess, visualize

    state = _stn_answering([[0.8, 0, 0], [0, 0.8, 0]], small_fer2013.train)  # sampling 0.8 as far out: x1.25
    faces = small_fer2013.val
    profile = visualize.zoom_profile(state, faces, factors=(1.0, 1.5), batch_size=40)

    assert profile["faces"] == len(faces) and profile["zooms"] == [1.0, 1.5]
    np.testing.assert_allclose(profile["theta_zoom"]["mean"], [1.25, 1.25], rtol=1e-5)
    np.testing.assert_allclose(profile["theta_zoom"]["std"], [0, 0], atol=1e-4)
    _assert_scores_match_eval_step(profile, state, faces, [faces.images, preprocess.zoom(faces.images, 1.5)])
    # An untrained network barely tells the zoom apart, but it does: the same faces would give the same loss.
    assert profile["loss"][1] != profile["loss"][0]


def test_visualize_script_writes_attention_statistics_of_the_whole_split(trained, fer2013, fer2013_dir, tmp_path):
    workdir, _, _ = trained
    exported = str(tmp_path / "exported")
    inference.export_model(*checkpoint.load(workdir), exported)
    result = subprocess.run([sys.executable, "-m", "experiments.visualize", f"--workdir={exported}",
                             "--faces_per_class=1", "--translation_offsets=0,0.5", "--tilt_degrees=0,-20",
                             "--zoom_factors=1.2"],
                            cwd=tmp_path, capture_output=True, text=True, env=_script_env(fer2013_dir), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    output = tmp_path / "exported_visualize"  # by default, named after the exported model
    with open(output / "attention.json") as f:
        stats = json.load(f)
    assert stats["split"] == "val" and stats["faces"] == len(fer2013.val)
    assert 0 < stats["area_scale"]["min"] <= stats["area_scale"]["mean"] <= stats["area_scale"]["max"]
    assert 0 <= stats["live_units"] <= stats["units"] == 32
    assert "live localisation units" in result.stdout and os.path.exists(output / "attention.png")
    profile = stats["translation_profile"]  # scored at the two offsets asked for, along x and y
    assert profile["offsets_px"] == [0.0, 0.5] and profile["faces"] == len(fer2013.val)
    assert all(len(profile[axis][score]) == 2 for axis in "xy" for score in ("accuracy", "loss"))
    assert profile["x"]["accuracy"][0] == profile["y"]["accuracy"][0]  # both unmoved at 0
    with open(output / "tilt_profile.json") as f:
        tilt = json.load(f)
    assert tilt["degrees"] == [0.0, -20.0] and tilt["accuracy"][0] == profile["x"]["accuracy"][0]  # unturned
    assert len(tilt["theta_degrees"]["mean"]) == 2 and "faces turned by -20 degrees" in result.stdout
    with open(output / "zoom_profile.json") as f:
        zoom = json.load(f)
    assert zoom["zooms"] == [1.2] and len(zoom["accuracy"]) == len(zoom["theta_zoom"]["mean"]) == 1
    assert "faces magnified by 1.2: accuracy" in result.stdout


@pytest.mark.parametrize("flag, value, reason", [
    ("translation_offsets", "0,half", "not a list of numbers"),
    ("tilt_degrees", "0,half", "not a list of numbers"),
    ("zoom_factors", "0,half", "not a list of numbers"),
    ("zoom_factors", "1,0", "factors must be positive"),
])
def test_visualize_script_rejects_bad_numbers_in_one_line(flag, value, reason, tmp_path, fer2013_dir):
    result = subprocess.run([sys.executable, "-m", "experiments.visualize", f"--workdir={tmp_path}",
                             f"--{flag}={value}"],
                            cwd=REPO, capture_output=True, text=True, env=_script_env(fer2013_dir), timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: --{flag}={value}: {reason}"
    assert "Traceback" not in result.stderr


def test_every_config_field_is_a_typed_flag():
    import dataclasses

    from absl import flags as absl_flags

    from experiments import flags as experiment_flags

    values = absl_flags.FlagValues()
    experiment_flags.define_config_flags(values)
    assert {f.name for f in dataclasses.fields(configs.Config)} <= set(values)
    values(["prog", "--dropout=0.3", "--limit_train=50", "--widths=8,16", "--hidden=32,16", "--noflip",
            "--convs_per_stage=2", "--model=cnn_shallow", "--distill_from=runs/a,runs/b"])
    config = experiment_flags.config_from_flags(values).validate()
    assert config.dropout == 0.3 and config.limit_train == 50 and config.widths == (8, 16) and not config.flip
    assert config.hidden == (32, 16) and config.convs_per_stage == 2 and config.distill_from == ("runs/a", "runs/b")
    assert configs.Config.from_dict(json.loads(config.to_json())) == config
    # Every flag's help is its field's comment, trailing or (for a longer one) the lines above it.
    assert all(values[f.name].help != f.name for f in dataclasses.fields(configs.Config))
    assert values["train_only"].help.startswith("Fine-tune only these top-level parts")


def test_convs_per_stage_sets_the_depth_of_every_cnn_family():
    config = configs.tiny_config(model="_tiny_stn_deep", convs_per_stage=2)
    model = models.create(config.model, **config.model_kwargs())
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 48, 48, 1)))
    convs = [name for name in variables["params"]["convs"] if name.startswith("conv")]
    assert sorted(convs) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"] and "stn_loc" in variables["params"]
    with pytest.raises(ConfigError, match="--convs_per_stage=0: must be positive"):
        configs.tiny_config(convs_per_stage=0)
    with pytest.raises(ConfigError, match="--model=stn"):
        configs.get_config("stn", convs_per_stage=1)


def test_hidden_widths_shape_the_head_and_take_a_grid():
    config = configs.tiny_config(hidden=(12, 10))
    model = models.create(config.model, **config.model_kwargs())
    variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)), train=False)
    head = variables["params"]["classifier"]
    assert head["fc1"]["kernel"].shape[-1] == 12 and head["fc2"]["kernel"].shape == (12, 10)
    assert kfold.parse_grid("hidden=32,16/8") == [{"hidden": (32,)}, {"hidden": (16, 8)}]
    with pytest.raises(ConfigError, match="--hidden=.*must be positive"):
        configs.tiny_config(hidden=(0,))
    with pytest.raises(ConfigError, match="--model=stn"):
        configs.get_config("stn", hidden=(64,))


def test_damaged_checkpoint_is_a_clear_error(trained, tmp_path):
    workdir, _, _ = trained
    damaged = tmp_path / "damaged"
    shutil.copytree(os.path.join(workdir, "checkpoints", "best"), damaged)
    for root, _, files in os.walk(damaged):
        for name in files:
            if os.path.basename(root) == "d":  # the array data files
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"\0" * 10)
    with pytest.raises(checkpoint.CheckpointError, match="damaged: unreadable checkpoint"):
        checkpoint.load(str(damaged))
    # From the command line: one error line, and no tracebacks from reads abandoned after the first failure.
    face = tmp_path / "face.png"
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(face)
    result = subprocess.run([sys.executable, "-m", "experiments.predict", f"--checkpoint={damaged}",
                             f"--image={face}", "--no_detect"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr


@pytest.mark.parametrize("recipe", sorted(glob.glob(os.path.join(REPO, "experiments", "recipes", "*.flags"))),
                         ids=os.path.basename)
def test_every_recipe_is_a_valid_config(recipe):
    from absl import flags as absl_flags

    from experiments import flags as experiment_flags

    values = absl_flags.FlagValues()
    experiment_flags.define_config_flags(values)
    values(["prog", f"--flagfile={recipe}"])
    assert experiment_flags.config_from_flags(values).validate() != configs.Config()  # the recipe took effect
