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
    (same / "web.yml").write_text(f"_BASE_: {TINY_PRETRAIN}\nOUTPUT_DIR: elsewhere\n"
                                  f"TEST:\n  IDS_PER_GALLERY: 100\n")
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "web.yml").write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  BASE_LR: 0.01\n")
    paths = [pretrained_weights_path(tiny_cfg("MODEL.CLIP.PRETRAINED", str(p)))
             for p in (recipe, same / "web.yml", changed / "web.yml")]
    assert paths[0] == paths[1]  # where it writes and how it would test are not what it trains
    assert paths[0] != paths[2]


def test_the_shipped_recipes_cache_keeps_its_name_when_keys_are_added(tiny_cfg, tmp_path):
    """Users' caches of configs/CPCL/synthetic-web.yml (the demo's and the benchmarks' weights)
    are not pretrained again because a later version declares new keys at their defaults. Change
    the expected name only with what the recipe trains (and say so in the commit)."""
    shipped = os.path.join(REPO, "configs", "CPCL", "synthetic-web.yml")
    name = lambda recipe: os.path.basename(pretrained_weights_path(tiny_cfg(
        "MODEL.CLIP.ARCH", "CPCL-Tiny", "MODEL.CLIP.PRETRAINED", str(recipe),
        "DATASETS.ROOT", str(tmp_path))))
    assert name(shipped) == "CPCL-Tiny-synthetic-web-7d420afa73.pth"
    for value in ("0.95", "0.5"):  # at its default the later key changes nothing, set it does
        recipe = tmp_path / value / "synthetic-web.yml"
        recipe.parent.mkdir()
        recipe.write_text(f"_BASE_: {shipped}\nPSEUDO:\n  IVF:\n    MIN_RECALL: {value}\n")
        assert (name(recipe) == name(shipped)) == (value == "0.95")


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


def _said(capfd):
    out, err = capfd.readouterr()
    return out + err


def test_a_damaged_cache_is_found_by_its_checksum_and_made_again(tiny_cfg, tmp_path, capfd):
    recipe = tmp_path / "web.yml"  # weights of their own: other tests read the shared ones
    recipe.write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  BASE_LR: 0.003\n")
    cfg = tiny_cfg("MODEL.CLIP.PRETRAINED", str(recipe))
    path = ensure_pretrained_weights(cfg)
    assert open(path + ".sha256").read().strip() == pretraining._sha256(path)
    whole = open(path, "rb").read()

    def truncate():
        with open(path, "r+b") as f:
            f.truncate(len(whole) // 3)

    def flip_a_byte():  # same size, one byte in the middle changed
        with open(path, "r+b") as f:
            f.seek(len(whole) // 2)
            f.write(bytes([whole[len(whole) // 2] ^ 0xFF]))

    def unreadable_without_checksum():  # a cache from before checksums, overwritten
        os.remove(path + ".sha256")
        with open(path, "wb") as f:
            f.write(b"not a checkpoint")
    for damage in (truncate, flip_a_byte, unreadable_without_checksum):
        _said(capfd)
        damage()
        assert ensure_pretrained_weights(cfg) == path
        said = _said(capfd)
        assert f"The cached pretrained weights {path} are damaged" in said, damage.__name__
        assert "pretraining them again" in said and "pretraining once" in said
        assert open(path + ".sha256").read().strip() == pretraining._sha256(path)
        torch.load(path, map_location="cpu", weights_only=True)
    # A whole cache from before checksums is adopted as it is, not made again.
    os.remove(path + ".sha256")
    stamp = os.path.getmtime(path)
    assert ensure_pretrained_weights(cfg) == path
    assert os.path.getmtime(path) == stamp and os.path.isfile(path + ".sha256")
    assert "pretraining" not in _said(capfd)


def test_runs_asking_for_the_same_weights_at_once_pretrain_them_once(tmp_path, data_root,
                                                                    tiny_cfg):
    import subprocess
    import sys
    import time
    from filelock import FileLock
    recipe = tmp_path / "web.yml"
    recipe.write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  BASE_LR: 0.004\n")
    path = pretrained_weights_path(tiny_cfg("MODEL.CLIP.PRETRAINED", str(recipe)))
    code = ("import sys; from cpcl_plugin import load_config\n"
            "from cpcl_plugin.engine.pretraining import ensure_pretrained_weights\n"
            f"cfg = load_config({os.path.join(REPO, 'tests', 'configs', 'tiny.yml')!r}, "
            f"['MODEL.CLIP.PRETRAINED', {str(recipe)!r}, 'DATASETS.ROOT', {data_root!r}])\n"
            "print('WEIGHTS', ensure_pretrained_weights(cfg), flush=True)")
    outputs = [tmp_path / f"run{i}.txt" for i in range(2)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Both runs start while the lock is held (as by a third run pretraining), so that both
    # reach it: when it is released, one pretrains and the other keeps waiting.
    with FileLock(path + ".lock"):
        procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=open(o, "w"),
                                  stderr=subprocess.STDOUT) for o in outputs]
        deadline = time.time() + 120
        while time.time() < deadline and not all(
                "another run is pretraining" in o.read_text() for o in outputs):
            time.sleep(0.5)
    for proc in procs:
        proc.wait(timeout=600)
    said = [o.read_text() for o in outputs]
    assert [proc.returncode for proc in procs] == [0, 0], said
    assert all("another run is pretraining" in out for out in said)
    assert sum("pretraining once" in out for out in said) == 1
    assert {line for out in said for line in out.splitlines() if line.startswith("WEIGHTS")} == \
        {f"WEIGHTS {path}"}


def _processes_with(text):
    """PIDs of live (not zombie) processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads processes from /proc (Linux)")
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_a_run_killed_while_pretraining_leaves_no_process_and_no_folder(tmp_path, capfd,
                                                                        tiny_cfg, signal_name):
    import signal
    import subprocess
    import sys
    import time
    from conftest import TINY
    root = tmp_path / "data"
    recipe = tmp_path / "long-web.yml"  # long enough to be killed in the middle
    recipe.write_text(f"_BASE_: {TINY_PRETRAIN}\nSOLVER:\n  MAX_EPOCH: 400\n")
    run = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "train_net.py"),
                            "--config-file", TINY, "MODEL.CLIP.PRETRAINED", str(recipe),
                            "DATASETS.ROOT", str(root), "OUTPUT_DIR", str(tmp_path / "out")],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = root / "pretrained"
    try:
        deadline, child = time.time() + 300, []
        while time.time() < deadline and not child:  # until the child trains in its folder
            time.sleep(1)
            folders = list(cache.glob(".pretraining-*")) if cache.is_dir() else []
            child = [p for f in folders if (f / "log.txt").exists()
                     for p in _processes_with(str(f))]
        assert child, "the pretraining child never started"
        run.send_signal(getattr(signal, signal_name))
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.time() + 30
    while time.time() < deadline and any(_processes_with(str(f)) for f in folders):
        time.sleep(0.5)
    assert not any(_processes_with(str(f)) for f in folders)  # died with its parent
    assert all(f.exists() for f in folders)  # left behind until the next start
    # The next start of a run that uses this cache folder (here for other, quick weights).
    _said(capfd)
    ensure_pretrained_weights(tiny_cfg("MODEL.CLIP.PRETRAINED", TINY_PRETRAIN, "DATASETS.ROOT",
                                       str(root)))
    assert not list(cache.glob(".pretraining-*"))
    assert f"working folder left by stopped runs: {folders[0]}" in _said(capfd)


def test_only_the_working_folders_of_stopped_runs_are_removed(tmp_path):
    import socket
    import subprocess
    import sys
    import time
    from cpcl_plugin.utils import workdirs
    from cpcl_plugin.utils.workdirs import make_work_folder, remove_leftover_work_folders
    host = workdirs._machine()  # the host name and, on Linux, the pid namespace
    assert host.startswith(socket.gethostname())
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid no longer runs
    mine = make_work_folder(str(tmp_path), ".work-")
    assert os.path.basename(mine).startswith(f".work-{host}-{os.getpid()}-")
    names = {"stopped": f".work-{host}-{ended.pid}-a1b2c3d4",
             "other machine, named like this one": f".work-{host}-x-1-{ended.pid}-zz_9yy8x",
             "other machine": f".work-node-07-{ended.pid}-a1b2c3d4",
             "another container, same host name":
                 f".work-{socket.gethostname()}.1-{ended.pid}-a1b2c3d4",
             "unowned, idle": ".work-q9w8e7r6", "unowned, busy": ".work-m1n2b3v4",
             "not a working folder": "SyntheticPedes-0123456789"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.txt").write_text("x")
    now = time.time()
    hours_ago = now - 2 * 3600
    for part in (tmp_path / names["unowned, idle"], tmp_path / names["unowned, idle"] / "log.txt"):
        os.utime(part, (hours_ago, hours_ago))
    said = []
    removed = remove_leftover_work_folders(str(tmp_path), ".work-", said.append, now=now)
    assert sorted(removed) == sorted(str(tmp_path / names[k]) for k in ("stopped", "unowned, idle"))
    assert said == [f"Removed 2 working folders left by stopped runs: {', '.join(removed)}"]
    assert os.path.isdir(mine) and all((tmp_path / names[k]).is_dir() for k in names
                                       if k not in ("stopped", "unowned, idle"))
    assert remove_leftover_work_folders(str(tmp_path), ".work-", said.append, now=now) == []
    assert len(said) == 1  # nothing removed, nothing said
