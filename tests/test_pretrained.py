"""MODEL.CLIP.PRETRAINED naming a pretraining config: trained once, cached under a hash of what
produced it, written atomically, loaded through open_clip like downloaded CLIP weights."""
import glob
import os

import pytest
import torch

from cpcl_plugin import CPCLTrainer, ConfigError
from cpcl_plugin.modeling import load_trained_model
from cpcl_plugin.engine import pretraining
from cpcl_plugin.engine.pretraining import ensure_pretrained_weights
from cpcl_plugin.modeling.pretrained import pretrained_weights_path

from conftest import REPO

TINY_PRETRAIN = os.path.join(REPO, "tests", "configs", "tiny-pretrain.yml")


def _leftovers(folder):
    return glob.glob(os.path.join(folder, ".pretraining-*")) + \
        glob.glob(os.path.join(folder, "*.tmp"))


def test_a_pretraining_config_is_trained_once_and_loaded_as_clip_weights(tiny_cfg):
    cfg = tiny_cfg("MODEL.CLIP.PRETRAINED", TINY_PRETRAIN)
    path = pretrained_weights_path(cfg)
    assert os.path.basename(path).startswith("CPCL-Tiny-tiny-pretrain-")
    model = CPCLTrainer.build_model(cfg)  # makes them on first use
    assert os.path.isfile(path) and os.path.isfile(path[:-4] + ".log.txt")
    assert not _leftovers(os.path.dirname(path))
    # The run's log, beside the weights, ends with its results (cpcl_plugin.train's own lines).
    assert "Text-to-image results:" in open(path[:-4] + ".log.txt").read()
    state = torch.load(path, map_location="cpu", weights_only=True)  # an open_clip state dict
    assert {"visual.conv1.weight", "token_embedding.weight", "text_projection",
            "logit_scale"} <= set(state)
    # Both towers hold exactly the pretrained tensors.
    for name, tensor in model.backbone.visual.state_dict().items():
        assert torch.equal(tensor, state[f"visual.{name}"]), name
    for name, tensor in model.text_encoder.clip.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    # ... which are trained, not the random initialisation of the same seed.
    torch.manual_seed(0)
    random_init = CPCLTrainer.build_model(tiny_cfg())
    assert not torch.equal(random_init.backbone.visual.conv1.weight,
                           model.backbone.visual.conv1.weight)
    # Reused, not made again.
    stamp = os.path.getmtime(path)
    assert ensure_pretrained_weights(cfg) == path
    CPCLTrainer.build_model(cfg)
    assert os.path.getmtime(path) == stamp


def test_the_cache_name_covers_what_produced_the_weights(tiny_cfg, tmp_path):
    recipe = tmp_path / "web.yml"
    recipe.write_text(f"_BASE_: {TINY_PRETRAIN}\n")
    same = tmp_path / "other_dir"
    same.mkdir()
    (same / "web.yml").write_text(f"_BASE_: {TINY_PRETRAIN}\nOUTPUT_DIR: elsewhere\n")
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "web.yml").write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  BASE_LR: 0.01\n")
    paths = [pretrained_weights_path(tiny_cfg("MODEL.CLIP.PRETRAINED", str(p)))
             for p in (recipe, same / "web.yml", changed / "web.yml")]
    assert paths[0] == paths[1]  # where it writes is not what it trains
    assert paths[0] != paths[2]


def test_a_failed_pretraining_leaves_no_weights(tiny_cfg, tmp_path, capfd):
    misspelt = tmp_path / "misspelt.yml"
    misspelt.write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  NO_SUCH_KEY: 1\n")
    with pytest.raises(ConfigError, match="Unknown config key in .*misspelt.yml: SOLVER.NO_SUCH"):
        ensure_pretrained_weights(tiny_cfg("MODEL.CLIP.PRETRAINED", str(misspelt)))
    broken = tmp_path / "broken.yml"  # fails only when it runs
    broken.write_text(f"_BASE_: {TINY_PRETRAIN}\nDATASETS:\n  NAMES: (\"NoSuchData\",)\n")
    cfg = tiny_cfg("MODEL.CLIP.PRETRAINED", str(broken))
    with pytest.raises(ConfigError, match="its pretraining run failed"):
        ensure_pretrained_weights(cfg)
    assert "Unknown dataset 'NoSuchData'" in capfd.readouterr().err  # the child's own sentence
    path = pretrained_weights_path(cfg)
    assert not os.path.exists(path) and not _leftovers(os.path.dirname(path))


def test_an_interrupted_export_leaves_no_weights(tiny_cfg, tmp_path, monkeypatch):
    recipe = tmp_path / "web.yml"  # not yet made by another test
    recipe.write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  BASE_LR: 0.002\n")
    cfg = tiny_cfg("MODEL.CLIP.PRETRAINED", str(recipe))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pretraining, "export_open_clip_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_pretrained_weights(cfg)
    path = pretrained_weights_path(cfg)
    assert not os.path.exists(path) and not _leftovers(os.path.dirname(path))


def test_a_cycle_of_pretraining_configs_is_refused(tiny_cfg, tmp_path):
    cyclic = tmp_path / "cyclic.yml"
    cyclic.write_text(f"_BASE_: {TINY_PRETRAIN}\nMODEL:\n  CLIP:\n    PRETRAINED: {cyclic}\n")
    with pytest.raises(ConfigError, match="recipes form a cycle"):
        ensure_pretrained_weights(tiny_cfg("MODEL.CLIP.PRETRAINED", str(cyclic)))


def test_weights_made_from_other_made_weights_are_named_by_both_configs(tiny_cfg, tmp_path):
    inner = tmp_path / "inner.yml"
    outer = tmp_path / "outer.yml"
    outer.write_text(f"_BASE_: {TINY_PRETRAIN}\nMODEL:\n  CLIP:\n    PRETRAINED: {inner}\n")
    cfg = tiny_cfg("MODEL.CLIP.PRETRAINED", str(outer))
    names = []
    for lr in ("0.001", "0.002"):  # the inner config changes, the outer one does not
        inner.write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  BASE_LR: {lr}\n")
        names.append(pretrained_weights_path(cfg))
    assert names[0] != names[1]
    assert all(os.path.basename(n).startswith("CPCL-Tiny-outer-") for n in names)


def test_missing_pretraining_config_is_named(tiny_cfg):
    with pytest.raises(ConfigError, match="MODEL.CLIP.PRETRAINED nowhere.yml does not exist"):
        CPCLTrainer.build_model(tiny_cfg("MODEL.CLIP.PRETRAINED", "nowhere.yml"))


def test_tools_with_trained_weights_do_not_pretrain(tiny_cfg, tmp_path):
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": CPCLTrainer.build_model(tiny_cfg()).state_dict()}, checkpoint)
    recipe = tmp_path / "never-made.yml"  # a recipe of its own: no other test makes its weights
    recipe.write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  BASE_LR: 0.003\n")
    cfg = tiny_cfg("MODEL.CLIP.PRETRAINED", str(recipe), "MODEL.WEIGHTS", str(checkpoint))
    model = load_trained_model(cfg, "a test")
    assert not model.training
    path = pretrained_weights_path(cfg)
    assert not os.path.exists(path) and not _leftovers(os.path.dirname(path))
