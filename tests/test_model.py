"""Encoders, weight loading, the meta-architecture and one training step."""
import numpy as np
import open_clip
import pytest
import torch

from cpcl_plugin import CPCLTrainer, ConfigError
from cpcl_plugin.data import build_tokenizer
from cpcl_plugin.modeling import create_clip_model, itc_loss


def test_weights_saved_at_224_load_into_384x128(tiny_cfg, tmp_path, caplog):
    src = open_clip.create_model("CPCL-Tiny", force_image_size=(224, 224))
    with torch.no_grad():  # a smooth, known position-embedding grid
        grid = torch.linspace(-1, 1, 14)
        pos = src.visual.positional_embedding
        pos[1:] = (grid[:, None, None] + 2 * grid[None, :, None]).expand(14, 14, pos.shape[1]).reshape(-1, pos.shape[1])
    path = tmp_path / "clip224.pt"
    torch.save(src.state_dict(), path)

    cfg = tiny_cfg("MODEL.CLIP.PRETRAINED", str(path), "INPUT.SIZE_TRAIN", "[384, 128]",
                   "INPUT.SIZE_TEST", "[384, 128]", "MODEL.CLIP.CONTEXT_LENGTH", "77")
    with caplog.at_level("INFO", logger="cpcl_plugin"):
        model = create_clip_model(cfg)
    assert "interpolated from a 14x14 grid (224x224 pixels) to 24x8 (384x128 pixels)" in caplog.text
    assert tuple(model.visual.grid_size) == (24, 8)
    new_pos = model.visual.positional_embedding.detach()
    assert new_pos.shape[0] == 1 + 24 * 8
    assert torch.equal(new_pos[0], src.visual.positional_embedding[0])  # class token kept
    # The interpolated grid still increases top-to-bottom and left-to-right, spanning the same range.
    g = new_pos[1:, 0].reshape(24, 8)
    assert (g[1:, :] - g[:-1, :] > 0).all() and (g[:, 1:] - g[:, :-1] > 0).all()
    assert g.min() > -3.2 and g.max() < 3.2
    for name, p in src.state_dict().items():  # everything else is loaded unchanged
        if name != "visual.positional_embedding":
            assert torch.equal(model.state_dict()[name], p), name
    out = model.encode_image(torch.zeros(2, 3, 384, 128))
    assert out.shape == (2, 128)


def test_unloadable_pretrained_weights_say_what_to_do(tiny_cfg, tmp_path):
    bad = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(3)}, bad)
    with pytest.raises(ConfigError, match="does not fit MODEL.CLIP.ARCH CPCL-Tiny .*open_clip state dict"):
        create_clip_model(tiny_cfg("MODEL.CLIP.PRETRAINED", str(bad)))
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        create_clip_model(tiny_cfg("MODEL.CLIP.ARCH", "ViT-Q-99"))


def test_openai_tags_get_quick_gelu_and_resnets_need_square_images(tiny_cfg, monkeypatch):
    seen = {}

    def fake_create_model(arch, **kwargs):  # no download here: record what would be asked
        seen[arch] = kwargs
        raise RuntimeError("stop")
    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    with pytest.raises(ConfigError):
        create_clip_model(tiny_cfg("MODEL.CLIP.ARCH", "ViT-B-16", "MODEL.CLIP.PRETRAINED", "openai"))
    assert seen["ViT-B-16"]["force_quick_gelu"] is True
    assert seen["ViT-B-16"]["force_image_size"] == (64, 32)
    with pytest.raises(ConfigError, match="RN50 takes square images only"):
        create_clip_model(tiny_cfg("MODEL.CLIP.ARCH", "RN50"))


def test_eval_mode_returns_normalised_features(tiny_cfg):
    model = CPCLTrainer.build_model(tiny_cfg()).eval()
    with torch.no_grad():
        img = model({"images": torch.rand(3, 3, 64, 32) * 255})
        txt = model({"tokens": torch.randint(1, 400, (5, 48))})
    assert img.shape == (3, 128) and txt.shape == (5, 128)
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(5), atol=1e-5)


def test_itc_loss_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    logits = 10 * img @ txt.t()
    expected = (torch.nn.functional.cross_entropy(logits, torch.arange(2))
                + torch.nn.functional.cross_entropy(logits.t(), torch.arange(2))) / 2
    assert itc_loss(img, txt, 10.0) == pytest.approx(expected.item())
    # Two pairs of one image: each caption is a positive of both rows, so the target is uniform
    # over the two and the loss is its entropy, log 2 (without ids it would be higher).
    same_img, same_txt = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    same = itc_loss(same_img, same_txt, 10.0, torch.tensor([3, 3]))
    assert same.item() == pytest.approx(np.log(2), abs=1e-6)


def _one_step(cfg):
    trainer = CPCLTrainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    from fastreid.utils.events import EventStorage
    trainer.epoch, trainer.iter = 0, 0
    with EventStorage(0) as trainer.storage:
        trainer.run_step()
    after = dict(trainer.model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    return trainer, before, changed


def test_parameters_change_after_one_step(tiny_cfg):
    # FastReID's default ContiguousParams optimiser leaves weights untouched on torch >= 2.
    trainer, before, changed = _one_step(tiny_cfg())
    assert len(changed) == len(before), set(before) - set(changed)


def test_fastreid_resnet_backbone_trains_one_step(tiny_cfg):
    trainer, before, changed = _one_step(tiny_cfg(
        "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.DEPTH", "18x",
        "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.BACKBONE.LAST_STRIDE", "2"))
    model = trainer.model
    assert type(model.backbone).__name__ == "ResNet"
    assert "heads.image.projection.weight" in changed
    assert any(n.startswith("backbone.") for n in changed)
    # The new projection learns HEADS_LR_FACTOR times faster than the backbone.
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    base = trainer.cfg.SOLVER.BASE_LR
    assert lrs[id(model.heads["image"].projection.weight)] == pytest.approx(
        base * trainer.cfg.SOLVER.HEADS_LR_FACTOR)
    assert lrs[id(model.backbone.conv1.weight)] == pytest.approx(base)


def test_training_batches_carry_no_identity_labels(tiny_cfg):
    trainer = CPCLTrainer(tiny_cfg())
    trainer.epoch = 0
    batch = trainer._next_batch()
    assert set(batch) == {"indices", "image_ids", "images", "valid", "tokens"}


def _cpu_autocast_dtypes():
    """The autocast dtypes this CPU build of torch runs (bfloat16 everywhere; float16 in recent
    releases)."""
    available = []
    for dtype in ("bfloat16", "float16"):
        try:
            with torch.autocast("cpu", dtype=getattr(torch, dtype)):
                torch.ones(2, 2) @ torch.ones(2, 2)
            available.append(dtype)
        except (RuntimeError, AssertionError):
            pass
    return available


@pytest.mark.parametrize("dtype", _cpu_autocast_dtypes())
def test_mixed_precision_step(tiny_cfg, dtype):
    """SOLVER.AMP: the encoders run in `dtype`, the losses get float32 features, the prototype
    memory stays float32 through its momentum update, every parameter trains, and float16 gets
    a gradient scaler (saved with checkpoints)."""
    from fastreid.utils.events import EventStorage
    cfg = tiny_cfg("SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", dtype)
    trainer = CPCLTrainer(cfg)
    model = trainer.model
    seen = []
    losses_of = model._losses

    def recording(image_features, text_features, batch):
        seen.append((image_features.dtype, text_features.dtype, torch.is_autocast_enabled("cpu")))
        return losses_of(image_features, text_features, batch)
    model._losses = recording
    encoded = []
    model.text_encoder.register_forward_hook(lambda m, i, out: encoded.append(out.dtype))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.epoch, trainer.iter = 0, 0
    with EventStorage(0) as trainer.storage:
        trainer.pseudo_label_hook.trainer = trainer
        trainer.pseudo_label_hook.before_epoch()  # pseudo labels: the memory takes part
        assert model.memory.ready
        encoded.clear()  # the pass above encodes in float32, outside autocast

        def changed():
            return [n for n, p in model.named_parameters() if n in before
                    and not torch.equal(before[n], p.detach())]
        # float16: the gradient scaler skips a step whose scaled gradients overflow and halves
        # its scale, so the first steps may leave the weights as they were.
        for steps in range(1, 9):
            trainer.run_step()
            trainer.iter += 1
            if changed():
                break
    assert encoded == [getattr(torch, dtype)] * steps
    assert seen == [(torch.float32, torch.float32, False)] * steps
    assert model.memory.image_prototypes.dtype == torch.float32
    assert len(changed()) == len(before), set(before) - set(changed())
    assert (trainer.grad_scaler is not None) == (dtype == "float16")
    assert ("grad_scaler" in trainer.checkpointer.checkpointables) == (dtype == "float16")


def test_gradient_checkpointing_changes_nothing_but_memory(tiny_cfg):
    """MODEL.CLIP.GRAD_CHECKPOINTING recomputes activations: the step is the same."""
    torch.manual_seed(0)
    trainer_a, _, _ = _one_step(tiny_cfg("SEED", "3"))
    torch.manual_seed(0)
    trainer_b, _, _ = _one_step(tiny_cfg("SEED", "3", "MODEL.CLIP.GRAD_CHECKPOINTING", "True"))
    assert trainer_b.model.text_encoder.clip.transformer.grad_checkpointing
    a, b = trainer_a.model.state_dict(), trainer_b.model.state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_pretrained_files_that_are_not_clip_weights_are_named(tiny_cfg, tmp_path):
    """MODEL.CLIP.PRETRAINED: each kind of wrong file is one sentence naming its path."""
    weights = open_clip.create_model("CPCL-Tiny", force_image_size=(64, 32),
                                     force_context_length=48).state_dict()
    torch.save(weights, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[:len(data) // 2])
    (tmp_path / "notes.txt").write_text("these are not weights\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)},
               tmp_path / "resnet.pth")
    unreadable = "is not a weight file open_clip can read"
    for name, needle in [("notes.txt", unreadable), ("truncated.pth", unreadable),
                         ("empty.pth", "is empty (0 bytes), not a weight file"),
                         ("folder", "is a folder, not a weight file; name the weight file in it"),
                         ("resnet.pth", "does not fit MODEL.CLIP.ARCH CPCL-Tiny"),
                         ("missing.pth", "is neither an existing file nor an open_clip tag")]:
        path = str(tmp_path / name)
        with pytest.raises(ConfigError) as info:
            create_clip_model(tiny_cfg("MODEL.CLIP.PRETRAINED", path))
        assert path in str(info.value) and needle in str(info.value), (name, str(info.value))
    model = create_clip_model(tiny_cfg("MODEL.CLIP.PRETRAINED", str(tmp_path / "full.pth")))
    assert torch.equal(model.state_dict()["text_projection"], weights["text_projection"])


def test_model_weights_load_strictly_unless_partial_is_asked(tiny_cfg, tmp_path, caplog):
    """MODEL.WEIGHTS: a folder is named as one; a checkpoint of another shape is refused, or with
    MODEL.WEIGHTS_PARTIAL loads what fits and logs each tensor skipped, with its shapes."""
    import logging

    from cpcl_plugin.utils.checkpoint import load_model_weights
    source = CPCLTrainer.build_model(tiny_cfg()).state_dict()
    dropped = next(k for k in source if k.startswith("backbone."))
    state = {k: v for k, v in source.items() if k != dropped}
    state["extra.weight"] = torch.ones(3)
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "epoch": 4}, path)
    with pytest.raises(ConfigError, match=f"MODEL.WEIGHTS {tmp_path} is a folder, not a "
                                          f"checkpoint file; name the checkpoint in it"):
        load_model_weights(CPCLTrainer.build_model(tiny_cfg()), str(tmp_path))

    cfg = tiny_cfg("MODEL.CLIP.CONTEXT_LENGTH", "32")  # the text position embedding differs
    assert not cfg.MODEL.WEIGHTS_PARTIAL  # strict unless asked
    model = CPCLTrainer.build_model(cfg)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="does not match the model .* add MODEL.WEIGHTS_PARTIAL"):
        load_model_weights(model, str(path))
    with caplog.at_level(logging.WARNING, logger="cpcl_plugin"):
        assert load_model_weights(model, str(path), partial=True)["epoch"] == 4
    pos = "text_encoder.clip.positional_embedding"
    shape = tuple(initial[pos].shape[1:])
    assert "skipped 3:" in caplog.text
    assert f"not in the checkpoint: {dropped} {tuple(initial[dropped].shape)}" in caplog.text
    assert (f"other shape: {pos} {(32,) + shape} in the model, {(48,) + shape} in the checkpoint"
            in caplog.text)
    assert "ignored, not in the model: extra.weight (3,)" in caplog.text
    for name, tensor in model.state_dict().items():
        expected = initial[name] if name in (pos, dropped) else state[name]
        assert torch.equal(tensor, expected), name


def test_text_padding_after_the_last_caption_is_not_computed_and_changes_nothing(tiny_cfg):
    """The text encoder stops at the batch's last end-of-text token: the same embeddings as the
    whole context (causal attention), on captions of any length, "!" (token 0) included."""
    cfg = tiny_cfg()
    encoder = CPCLTrainer.build_model(cfg).eval().text_encoder
    tokens = build_tokenizer(cfg).batch(
        ["a man!", "A woman in a red coat carrying a black backpack, walking fast!!", "x"])
    assert encoder.trims_padding and int(tokens.argmax(dim=1).max()) + 1 < tokens.shape[1]
    seen = []
    handle = encoder.clip.transformer.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        trimmed = encoder(tokens)
        encoder.trims_padding = False
        whole = encoder(tokens)
    handle.remove()
    assert seen == [int(tokens.argmax(dim=1).max()) + 1, tokens.shape[1]]
    torch.testing.assert_close(trimmed, whole, atol=1e-5, rtol=1e-5)


def test_a_library_error_is_quoted_in_whole_sentences_or_words():
    from cpcl_plugin.errors import error_summary
    torch_says = RuntimeError(
        "PytorchStreamReader failed reading zip archive: failed finding central directory. If "
        "you are seeing this error, there is a high chance that your file is corrupted and you "
        "should download it again.\nmore details")
    assert error_summary(torch_says) == ("RuntimeError: PytorchStreamReader failed reading zip "
                                         "archive: failed finding central directory.")
    one_sentence = ValueError("a very long message without any full stop " * 6)
    said = error_summary(one_sentence)
    assert said.endswith(" …") and len(said) < 190
    assert said[:-2].rstrip().endswith(("message", "without", "any", "full", "stop", "a", "very",
                                        "long"))
    assert error_summary(KeyError()) == "KeyError"
