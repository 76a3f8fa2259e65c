"""OPLM, the prototype memory, the HCM losses, the P x K sampler and the pseudo-label pass."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpcl_plugin import CPCLTrainer
from cpcl_plugin.clustering import cooccurrence, mine_outliers, pseudo_label_quality
from cpcl_plugin.data import EpochPairSampler, PseudoIdentitySampler
from cpcl_plugin.modeling import (PrototypeMemory, cross_prototype_loss, intra_prototype_loss,
                                  momentum_update, sdm_loss)


def unit(*rows):
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- OPLM ----------------------------------------------------------------------------------------
def oplm_case():
    # 4 images, one caption each. Image 3 is an image outlier whose caption is in text cluster 1;
    # caption 2 is a text outlier whose image is in image cluster 1.
    image_labels = np.array([0, 0, 1, -1])
    text_labels = np.array([0, 1, -1, 1])
    pair_image = np.arange(4)
    image_f = unit([1, 0], [1, 0.1], [0, 1], [0.2, 1])
    text_f = unit([1, 0], [0, 1], [0.1, 1], [0, 1])
    return image_labels, text_labels, pair_image, image_f, text_f


def test_oplm_recovers_through_the_paired_modality():
    y_v, y_t, stats = mine_outliers(*oplm_case(), threshold=0.5)
    # Image 3's caption has text label 1, which co-occurs with image labels {0} (pair 1) only...
    assert cooccurrence([0, 0, 1, -1], [0, 1, -1, 1], 2, 2).toarray().tolist() == [[1, 1], [0, 0]]
    # ... so its only candidate is image cluster 0, whose prototype is far: cos < 0.5, stays -1.
    assert y_v.tolist() == [0, 0, 1, -1]
    # Caption 2's image is in image cluster 1, which co-occurs with no text label: stays -1.
    assert y_t.tolist() == [0, 1, -1, 1]
    assert stats == {"image_recovered": 0, "text_recovered": 0}


def test_oplm_assigns_the_closest_cooccurring_prototype_above_threshold():
    image_labels = np.array([0, 1, -1, 0, 1])
    text_labels = np.array([0, 1, 1, -1, 0])  # pair 4 links image cluster 1 with text cluster 0
    pair_image = np.arange(5)
    image_f = unit([1, 0], [0, 1], [0.1, 1], [1, 0.1], [0, 1])
    text_f = unit([1, 0], [0, 1], [0, 1], [1, 0.05], [1, 0])
    y_v, y_t, stats = mine_outliers(image_labels, text_labels, pair_image, image_f, text_f, 0.5)
    assert y_v[2] == 1  # caption label 1 co-occurs with image cluster 1; cos ~ 0.99
    assert y_t[3] == 0  # image cluster 0 co-occurs with text cluster 0 only
    assert stats == {"image_recovered": 1, "text_recovered": 1}
    # A threshold above every cosine recovers nothing.
    y_v, y_t, stats = mine_outliers(image_labels, text_labels, pair_image, image_f, text_f, 1.01)
    assert y_v[2] == -1 and y_t[3] == -1


def test_oplm_leaves_double_outliers_alone():
    y_v, y_t, _ = mine_outliers(np.array([0, 0, -1]), np.array([0, 0, -1]), np.arange(3),
                                unit([1, 0], [1, 0], [1, 0]), unit([1, 0], [1, 0], [1, 0]), 0.0)
    assert y_v[2] == -1 and y_t[2] == -1


def _mine_outliers_one_by_one(image_labels, text_labels, pair_image, image_f, text_f, threshold):
    """docs/design.md's OPLM (section 1.3) written plainly, outlier by outlier, on a dense co-occurrence."""
    kv, kt = image_labels.max(initial=-1) + 1, text_labels.max(initial=-1) + 1
    pair_a = image_labels[pair_image]
    A = cooccurrence(pair_a, text_labels, kv, kt).toarray()
    y_v, y_t = image_labels.copy(), text_labels.copy()

    def best(f, cands, features, labels):
        protos = [features[labels == k].astype(np.float64).sum(0) for k in cands]
        sims = [np.float32(f.astype(np.float32) @ (p / np.linalg.norm(p)).astype(np.float32))
                for p in protos]
        return cands[int(np.argmax(sims))] if sims and max(sims) >= threshold else -1
    for i in np.flatnonzero(image_labels < 0):
        b = text_labels[(pair_image == i) & (text_labels >= 0)]
        y_v[i] = best(image_f[i], np.flatnonzero(A[:, b].sum(1) > 0), image_f, image_labels)
    for c in np.flatnonzero(text_labels < 0):
        cands = np.flatnonzero(A[pair_a[c]] > 0) if pair_a[c] >= 0 else []
        y_t[c] = best(text_f[c], cands, text_f, text_labels)
    return y_v, y_t


@pytest.mark.parametrize("seed", range(4))
def test_sparse_oplm_equals_the_plain_definition(seed):
    rng = np.random.default_rng(seed)
    pair_image = np.repeat(np.arange(40), rng.integers(1, 4, 40))
    image_labels, text_labels = rng.integers(-1, 6, 40), rng.integers(-1, 7, len(pair_image))
    image_f, text_f = (unit(*rng.normal(size=(n, 4))) for n in (40, len(pair_image)))
    if seed % 2:  # float16 features, as the pseudo-label pass stores them; ties between labels
        image_f, text_f = np.round(image_f).astype(np.float16), np.round(text_f).astype(np.float16)
    for threshold in (-1.0, 0.3, 0.9):
        y_v, y_t, stats = mine_outliers(image_labels, text_labels, pair_image, image_f, text_f,
                                        threshold)
        ref_v, ref_t = _mine_outliers_one_by_one(image_labels, text_labels, pair_image, image_f,
                                                 text_f, threshold)
        assert y_v.tolist() == ref_v.tolist() and y_t.tolist() == ref_t.tolist()
        assert stats["image_recovered"] == int((ref_v[image_labels < 0] >= 0).sum())


def test_pseudo_label_quality_monitoring():
    q = pseudo_label_quality(np.array([0, 0, 1, 1, -1]), np.array([5, 5, 5, 6, 6]))
    assert q["precision"] == pytest.approx(1 / 2)  # same-pseudo pairs (0,1), (2,3): one correct
    assert q["recall"] == pytest.approx(1 / 4)     # same-id pairs (0,1),(0,2),(1,2),(3,4)
    assert q["clusters_per_identity"] == 1.0 and q["outlier_share"] == pytest.approx(1 / 5)
    assert pseudo_label_quality(np.array([3, 3, 7]), np.array([1, 1, 2]))["ari"] == pytest.approx(1.0)


# ---- memory and losses ----------------------------------------------------------------------------
def test_memory_update_formula():
    P = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    momentum_update(P, f, torch.tensor([0, 0, -1]), momentum=0.2)
    first = F.normalize(0.2 * torch.tensor([1.0, 0.0]) + 0.8 * f[0], dim=0)
    second = F.normalize(0.2 * first + 0.8 * f[1], dim=0)  # one sample after the other
    assert torch.allclose(P[0], second) and torch.equal(P[1], torch.tensor([0.0, 1.0]))


def test_intra_prototype_loss_hand_computed():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    P = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = intra_prototype_loss(f, P, torch.tensor([0, 0, -1]), temperature=0.5)
    l0 = -np.log(np.exp(2) / (np.exp(2) + np.exp(0)))
    l1 = -np.log(np.exp(0) / (np.exp(0) + np.exp(2)))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert intra_prototype_loss(f, P, torch.tensor([-1, -1, -1]), 0.5).item() == 0.0


def test_cross_prototype_loss_counts_every_cooccurring_prototype():
    f = torch.tensor([[1.0, 0.0]])
    P_other = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    A = torch.tensor([[True, True, False]])  # own label 0 co-occurs with other labels 0 and 1
    loss = cross_prototype_loss(f, P_other, torch.tensor([0]), A[[0]], temperature=1.0)
    e = np.exp([1.0, 0.0, -1.0])
    assert loss.item() == pytest.approx(-np.log((e[0] + e[1]) / e.sum()), rel=1e-5)
    nothing = torch.tensor([[False, False, False]])
    assert cross_prototype_loss(f, P_other, torch.tensor([0]), nothing, 1.0).item() == 0.0


def test_cross_losses_use_the_cooccurrence_in_both_directions():
    # 2 image clusters, 3 text clusters: image 0 ~ texts {0, 2}, image 1 ~ text {1}.
    A = torch.tensor([[True, False, True], [False, True, False]])
    P_img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    P_txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    f = torch.tensor([[0.8, 0.6]])
    v2t = cross_prototype_loss(f, P_txt, torch.tensor([0]), A[[0]], 1.0)
    e = np.exp([0.8, 0.6, 0.96])
    assert v2t.item() == pytest.approx(-np.log((e[0] + e[2]) / e.sum()), rel=1e-5)
    t2v = cross_prototype_loss(f, P_img, torch.tensor([2]), A.t()[[2]], 1.0)  # text 2 ~ image {0}
    e = np.exp([0.8, 0.6])
    assert t2v.item() == pytest.approx(-np.log(e[0] / e.sum()), rel=1e-5)


def _dense_cross_loss(features, other_prototypes, labels, A, temperature):
    """The cross-modal loss from a dense (K_own, K_other) co-occurrence, as it was computed
    before the memory went sparse."""
    ok = (labels >= 0) & A[labels.clamp(min=0)].any(dim=1)
    if not ok.any():
        return 0.0
    log_p = F.log_softmax(features[ok] @ other_prototypes.t() / temperature, dim=1)
    return -torch.logsumexp(log_p.masked_fill(~A[labels[ok]], float("-inf")), dim=1).mean()


def _random_memory(rng, kv=7, kt=9, pairs=12):
    memory = PrototypeMemory()
    A = cooccurrence(rng.integers(-1, kv, pairs), rng.integers(-1, kt, pairs), kv, kt)
    memory.rebuild(unit(*rng.normal(size=(kv, 4))), unit(*rng.normal(size=(kt, 4))), A)
    return memory, torch.as_tensor(A.toarray() > 0)


def test_sparse_memory_gives_the_dense_losses():
    """The batch's rows of the sparse co-occurrence give the losses of the dense matrix, both
    directions, with outliers and labels that co-occur with nothing in the batch."""
    rng = np.random.default_rng(0)
    memory, A = _random_memory(rng)
    f = torch.as_tensor(unit(*rng.normal(size=(16, 4))))
    a, b = torch.as_tensor(rng.integers(-1, 7, 16)), torch.as_tensor(rng.integers(-1, 9, 16))
    assert torch.equal(memory.cooccurring_texts(a)[a >= 0], A[a[a >= 0]])
    assert not memory.cooccurring_texts(a)[a < 0].any()
    for own, other, labels, rows, dense in (
            ("image", memory.text_prototypes, a, memory.cooccurring_texts(a), A),
            ("text", memory.image_prototypes, b, memory.cooccurring_images(b), A.t())):
        loss = cross_prototype_loss(f, other, labels, rows, 0.05)
        assert loss.item() == _dense_cross_loss(f, other, labels, dense, 0.05).item(), own


def test_memory_checkpoint_state_is_sparse_and_old_dense_states_load(tmp_path):
    rng = np.random.default_rng(1)
    memory, A = _random_memory(rng)
    state = memory.export_state()
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    assert state["image_to_text_indices"].numel() == int(A.sum())  # non-zeros only
    torch.save(state, tmp_path / "memory.pth")
    restored = PrototypeMemory()
    restored.import_state(torch.load(tmp_path / "memory.pth", weights_only=True))
    labels = torch.arange(-1, 9)
    assert torch.equal(restored.cooccurring_images(labels), memory.cooccurring_images(labels))
    for k, v in restored.export_state().items():
        assert torch.equal(v, state[k]), k
    # A checkpoint of before the sparse memory: the dense bool co-occurrence.
    old = PrototypeMemory()
    old.import_state({"image_prototypes": state["image_prototypes"],
                      "text_prototypes": state["text_prototypes"], "cooccurrence": A})
    for k, v in old.export_state().items():
        assert torch.equal(v, state[k]), k
    empty = PrototypeMemory()
    nothing = torch.zeros(0, 0)
    empty.import_state({"image_prototypes": nothing, "text_prototypes": nothing,
                        "cooccurrence": nothing.bool()})
    assert not empty.ready


def test_sdm_loss_is_zero_for_a_perfect_match_of_distinct_labels():
    f = torch.eye(3)
    ids = torch.arange(3)
    assert sdm_loss(f, f, 100.0, torch.tensor([0, 1, -1]), ids).item() == pytest.approx(0.0, abs=1e-4)
    assert sdm_loss(f, f, 100.0, torch.tensor([0, 0, 1]), ids).item() > 0.1  # 0 and 1 share a label
    # Two pairs of one outlier image are positives of each other (as in ITC), not negatives.
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert sdm_loss(same, same, 100.0, torch.tensor([-1, -1]), torch.tensor([4, 4])).item() == \
        pytest.approx(0.0, abs=1e-4)


# ---- sampler --------------------------------------------------------------------------------------
def test_pk_sampler_batches_and_fallback():
    labels = np.repeat(np.arange(10), 6)  # 10 clusters of 6 pairs
    labels[:12] = -1                      # 12 outlier pairs (clusters 0 and 1 vanish)
    s = PseudoIdentitySampler(len(labels), batch_size_per_rank=8, num_instances=4, seed=0)
    s.set_labels(labels)
    items = list(s)
    assert len(items) == len(s) == (60 // 8) * 8
    for b in range(0, len(items), 8):
        batch = items[b:b + 8]
        assert len(set(batch)) == 8  # clusters of 6 >= K and outlier groups: no repeats
        groups = [labels[batch[i:i + 4]] for i in (0, 4)]
        for g in groups:  # a group is one cluster, or K distinct outliers
            assert len(set(g.tolist())) == 1
        assert not (groups[0][0] == groups[1][0] >= 0)  # never the same cluster twice
    # Outliers come as groups of K distinct pairs, in proportion to their number.
    assert 0 < np.mean(labels[items] < 0) < 0.5

    # Fewer clusters than P: shuffled batches (all distinct pairs), with "singleton" or "drop".
    for mode in ("singleton", "drop"):
        s = PseudoIdentitySampler(60, 8, 4, outliers=mode)
        s.set_labels(np.full(60, -1))
        items = list(s)
        assert len(items) == 56 and len(set(items)) == 56


def test_pk_sampler_gives_ranks_disjoint_shares(monkeypatch):
    from fastreid.utils import comm
    labels = np.repeat(np.arange(12), 5)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        s = PseudoIdentitySampler(len(labels), batch_size_per_rank=4, num_instances=4, seed=3)
        s.set_labels(labels)
        shares.append(list(s))
    assert len(shares[0]) == len(shares[1])
    for b in range(0, len(shares[0]), 4):  # batch b: rank 0 holds one cluster, rank 1 another
        assert len(set(labels[shares[0][b:b + 4]])) == 1
        assert labels[shares[0][b]] != labels[shares[1][b]]


# ---- the pseudo-label pass ----------------------------------------------------------------------
def test_features_are_aligned_with_samples(tiny_cfg):
    """The pass must key features by dataset index: a shuffled or sharded loader whose order were
    trusted would attach labels to the wrong samples."""
    from fastreid.evaluation import inference_on_dataset
    from cpcl_plugin.data import build_feature_loader
    from cpcl_plugin.evaluation import FeatureCollector
    from fastreid.data.data_utils import read_image
    from fastreid.data.transforms import build_transforms

    cfg = tiny_cfg("PSEUDO.BATCH_SIZE", "5")
    trainer = CPCLTrainer(cfg)
    train_set = trainer.data_loader.dataset
    loader, nq = build_feature_loader(cfg, train_set)
    # Batches arrive in reverse order, as from a loader that does not keep dataset order.
    reversed_loader = list(loader)[::-1]
    feats = inference_on_dataset(trainer.model, _Listed(reversed_loader), FeatureCollector())["feats"]
    model = trainer.model.eval()
    tf = build_transforms(cfg, is_train=False)
    with torch.no_grad():
        for c in (0, 7, nq - 1):
            want = model.encode_text(train_set.tokenizer(train_set.pairs[c][1])[None])[0]
            assert torch.allclose(feats[c], want, atol=1e-5)
        for i in (0, 5):
            img = tf(read_image(train_set.image_paths[i]))[None]
            assert torch.allclose(feats[nq + i], model.encode_image(img)[0], atol=1e-5)


class _Listed(list):
    @property
    def dataset(self):
        return range(sum(len(b["indices"]) for b in self))


def test_training_ignores_identity_labels(tiny_cfg, monkeypatch):
    """Shuffling every identity label of the dataset changes nothing that training computes."""
    from cpcl_plugin.data import datasets
    from cpcl_plugin.utils.checkpoint import parameter_digest
    from fastreid.utils.env import seed_all_rng
    from fastreid.utils.events import EventStorage

    def train_two_epochs():
        seed_all_rng(0)
        trainer = CPCLTrainer(tiny_cfg("PSEUDO.START_EPOCH", "0", "PSEUDO.EPS", "0.9",
                                       "PSEUDO.MIN_SAMPLES", "2"))
        with EventStorage(0) as trainer.storage:
            for trainer.epoch in range(2):
                trainer.iter = trainer.epoch * trainer.iters_per_epoch
                trainer.pseudo_label_hook.trainer = trainer
                trainer.pseudo_label_hook.before_epoch()
                for _ in range(trainer.iters_per_epoch):
                    trainer.run_step()
                trainer._epoch_iter = None
        return parameter_digest(trainer.model), trainer.pseudo_label_hook.image_labels

    digest, labels = train_two_epochs()
    real_load = datasets.TextImageDataset._load

    def shuffled_ids(self, path, skip_bad_images):
        records = real_load(self, path, skip_bad_images)
        rng = np.random.default_rng(1)
        return {s: [r._replace(pid=int(rng.integers(10 ** 6))) for r in recs]
                for s, recs in records.items()}
    monkeypatch.setattr(datasets.TextImageDataset, "_load", shuffled_ids)
    digest2, labels2 = train_two_epochs()
    assert digest == digest2 and np.array_equal(labels, labels2)


@pytest.mark.parametrize("pk_batches", [True, False])
def test_pseudo_labels_choose_the_batches_only_under_pk_batches(tiny_cfg, pk_batches):
    """PSEUDO.PK_BATCHES False (IRRA's shuffled batches) keeps the sampler shuffled while the
    labels still reach the memory and the training set's batches."""
    from fastreid.utils.events import EventStorage
    trainer = CPCLTrainer(tiny_cfg("PSEUDO.START_EPOCH", "0", "PSEUDO.EPS", "0.9",
                                   "PSEUDO.MIN_SAMPLES", "2", "PSEUDO.PK_BATCHES", str(pk_batches)))
    with EventStorage(0) as trainer.storage:
        trainer.epoch = trainer.iter = 0
        trainer.pseudo_label_hook.trainer = trainer
        trainer.pseudo_label_hook.before_epoch()
        batch = trainer._next_batch()
    sampler = trainer.data_loader.batch_sampler.sampler
    assert trainer.model.memory.ready and (trainer.pseudo_label_hook.image_labels >= 0).any()
    assert "image_labels" in batch and "text_labels" in batch
    # The epoch's order is the shuffled pass exactly when P x K batches are off.
    shuffled = EpochPairSampler(len(trainer.data_loader.dataset), sampler.batch_size_per_rank,
                                sampler.seed)
    shuffled.set_epoch(sampler.epoch)
    assert (list(sampler) == list(shuffled)) != pk_batches


@pytest.mark.parametrize("opts, expect_prototypes", [
    (["PSEUDO.MIN_SAMPLES", "1000", "PSEUDO.OPLM.ENABLED", "False"], False),  # all outliers
    (["PSEUDO.EPS", "0.999", "PSEUDO.MIN_SAMPLES", "1"], True),               # one big cluster
])
def test_degenerate_clusterings_keep_training(tiny_cfg, opts, expect_prototypes, caplog,
                                             monkeypatch):
    import logging

    from cpcl_plugin.engine import pseudo_labels
    from fastreid.utils.events import EventStorage
    extracted = []

    def recording(*args, **kwargs):
        features = real_extract(*args, **kwargs)
        extracted.append((features[0].dtype, features[1].dtype))
        return features
    real_extract = pseudo_labels.extract_features
    monkeypatch.setattr(pseudo_labels, "extract_features", recording)
    trainer = CPCLTrainer(tiny_cfg(*opts))
    with EventStorage(0) as trainer.storage, caplog.at_level(logging.INFO, "cpcl_plugin"):
        trainer.epoch = trainer.iter = 0
        trainer.pseudo_label_hook.trainer = trainer
        trainer.pseudo_label_hook.before_epoch()
        losses = trainer.model(trainer._next_batch())
        trainer.run_step()
    assert trainer.model.memory.ready == expect_prototypes
    # Each pass logs its peak memory per rank, restarted at its start (Linux).
    assert trainer.storage.latest()["pseudo/peak_memory_gb_rank0"][0] > 0
    assert "peak memory per rank: " in caplog.text and "process peak" not in caplog.text
    assert extracted == [(np.float16, np.float16)]  # the pass keeps half-precision features
    # The search that ran, for each modality (tiny sets: exact under PSEUDO.SEARCH auto).
    assert caplog.text.count("exact kNN search over ") == 2
    assert "(PSEUDO.SEARCH 'auto': exact up to PSEUDO.EXACT_MAX 200000 rows), 1 rank: " in \
        caplog.text
    assert ("loss_v2v" in losses) == expect_prototypes
    assert all(torch.isfinite(v) for v in losses.values())


def test_approximate_pass_logs_its_measured_recall(tiny_cfg, caplog):
    import logging

    from fastreid.utils.events import EventStorage
    trainer = CPCLTrainer(tiny_cfg("PSEUDO.SEARCH", "approximate", "PSEUDO.IVF.NLIST", "4",
                                   "PSEUDO.IVF.NPROBE", "1", "PSEUDO.IVF.MIN_RECALL", "0"))
    with EventStorage(0) as trainer.storage, caplog.at_level(logging.INFO, "cpcl_plugin"):
        trainer.epoch = trainer.iter = 0
        trainer.pseudo_label_hook.trainer = trainer
        trainer.pseudo_label_hook.before_epoch()
    for unit, name in (("images", "image"), ("captions", "text")):
        recall = trainer.storage.latest()[f"pseudo/{name}_knn_recall"][0]  # TensorBoard's too
        assert 0 < recall <= 1
        assert re.search(rf"approximate kNN search over \d+ {unit} \(4 cells, NPROBE 1: "
                         rf"recall {recall:.3f} on \d+ sampled rows\)", caplog.text), unit
    assert trainer.pseudo_label_hook.quality_history[0]["text_knn_recall"] == recall
