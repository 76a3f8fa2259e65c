"""The text-to-image metrics against FastReID's evaluate_rank and a plain per-query reference."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from fastreid.evaluation.rank import evaluate_rank

from cpcl_plugin.evaluation import TextImageEvaluator, t2i_metrics


FASTREID_TOL = 1e-4  # percent; evaluate_rank accumulates its CMC in float32


def reference_metrics(similarity, qp, gp):
    """The textbook definitions, one query at a time, ties broken by gallery order."""
    r1 = r5 = r10 = ap_sum = inp_sum = 0.0
    n = 0
    for i in range(len(qp)):
        order = sorted(range(len(gp)), key=lambda j: (-similarity[i, j], j))
        rel = [gp[j] == qp[i] for j in order]
        if not any(rel):
            continue
        n += 1
        first = rel.index(True)
        r1, r5, r10 = r1 + (first < 1), r5 + (first < 5), r10 + (first < 10)
        hits, precisions = 0, []
        for rank, is_pos in enumerate(rel, start=1):
            if is_pos:
                hits += 1
                precisions.append(hits / rank)
        ap_sum += np.mean(precisions)
        last = max(k for k, v in enumerate(rel) if v) + 1
        inp_sum += sum(rel) / last
    return OrderedDict(R1=100 * r1 / n, R5=100 * r5 / n, R10=100 * r10 / n,
                       mAP=100 * ap_sum / n, mINP=100 * inp_sum / n)


def fastreid_metrics(distance, qp, gp):
    cmc, ap, inp = evaluate_rank(distance, qp, gp, np.zeros(len(qp), int), np.ones(len(gp), int),
                                 max_rank=10, use_cython=False)
    return OrderedDict(R1=100 * cmc[0], R5=100 * cmc[4], R10=100 * cmc[9],
                       mAP=100 * np.mean(ap), mINP=100 * np.mean(inp))


def random_case(seed, nq=40, ng=30, nids=8, levels=None):
    rng = np.random.default_rng(seed)
    gp = rng.integers(0, nids, ng)
    qp = rng.choice(gp, nq)  # every query has at least one positive
    sim = rng.random((nq, ng)) if levels is None else rng.integers(0, levels, (nq, ng)) / levels
    return sim, qp, gp


@pytest.mark.parametrize("seed", range(5))
def test_equals_fastreid_and_reference_without_ties(seed):
    sim, qp, gp = random_case(seed)
    ours = t2i_metrics(sim, qp, gp)
    fr, ref = fastreid_metrics(-sim, qp, gp), reference_metrics(sim, qp, gp)
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k
        assert ours[k] == pytest.approx(fr[k], abs=FASTREID_TOL), k  # its CMC is float32


@pytest.mark.parametrize("seed", range(5))
def test_ties_are_broken_by_gallery_order(seed):
    # Only 4 similarity levels: many positive/negative ties.
    sim, qp, gp = random_case(seed, levels=4)
    ours = t2i_metrics(sim, qp, gp)
    ref = reference_metrics(sim, qp, gp)
    # FastReID's argsort is not stable; give it the same tie order explicitly (levels are >= 0.25
    # apart, so the tiny index term only orders equal values).
    tie_broken = -sim + np.arange(sim.shape[1])[None, :] * 1e-6
    fr = fastreid_metrics(tie_broken, qp, gp)
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k
        assert ours[k] == pytest.approx(fr[k], abs=FASTREID_TOL), k


def test_queries_with_a_single_positive():
    rng = np.random.default_rng(7)
    gp = np.arange(25)  # one image per identity
    qp = rng.integers(0, 25, 60)
    sim = rng.random((60, 25))
    ours = t2i_metrics(sim, qp, gp)
    ref = reference_metrics(sim, qp, gp)
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9)
    # With one positive, AP = INP = 1 / rank of that positive.
    assert ours["mAP"] == pytest.approx(ours["mINP"])


def test_hand_made_case():
    sim = np.array([[0.9, 0.8, 0.1],   # positives at ranks 1 and 3
                    [0.2, 0.5, 0.9]])  # positive at rank 2
    qp, gp = np.array([1, 2]), np.array([1, 2, 1])
    m = t2i_metrics(sim, qp, gp)
    assert m["R1"] == 50.0 and m["R5"] == 100.0
    ap_q0 = (1 / 1 + 2 / 3) / 2
    assert m["mAP"] == pytest.approx(100 * (ap_q0 + 1 / 2) / 2)
    assert m["mINP"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


def test_query_without_positive_is_left_out():
    sim = np.array([[0.9, 0.1], [0.5, 0.6]])
    m = t2i_metrics(sim, np.array([0, 5]), np.array([0, 1]))
    assert m["R1"] == 100.0 and m["mAP"] == 100.0


def test_chunking_does_not_change_results():
    sim, qp, gp = random_case(3, nq=50)
    chunked, whole = t2i_metrics(sim, qp, gp, chunk_elements=200), t2i_metrics(sim, qp, gp)
    for k in whole:  # only the summation order differs
        assert chunked[k] == pytest.approx(whole[k], abs=1e-9), k


@pytest.mark.parametrize("seed", range(3))
def test_float32_features_with_exact_ties(seed):
    """Duplicate gallery images give exactly tied similarities in float32, as real features do."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((30, 8)).astype(np.float32)
    g[10:20] = g[:10]  # ten gallery images appear twice
    q = rng.standard_normal((40, 8)).astype(np.float32)
    gp = rng.integers(0, 6, 30)
    qp = rng.choice(gp, 40)
    sim = q @ g.T
    ours = t2i_metrics(sim, qp, gp, chunk_elements=500)
    ref = reference_metrics(sim, qp, gp)
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), k


def test_evaluator_reorders_features_by_dataset_index():
    rng = np.random.default_rng(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    g = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    qp, gp = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, 3])
    feats, pids = torch.cat([q, g]), torch.cat([qp, gp])
    ev = TextImageEvaluator(num_query=6)
    ev.reset()
    perm = rng.permutation(10)  # batches arriving out of order (e.g. gathered from ranks)
    for chunk in np.array_split(perm, 3):
        idx = torch.as_tensor(chunk)
        ev.process({"indices": idx, "targets": pids[idx]}, feats[idx])
    res = ev.evaluate()
    expected = t2i_metrics((q @ g.t()).numpy(), qp.numpy(), gp.numpy())
    assert res["Rank-1"] == pytest.approx(expected["R1"])
    assert res["mAP"] == pytest.approx(expected["mAP"])
    assert res["metric"] == pytest.approx((expected["mAP"] + expected["R1"]) / 2)


def test_feature_collector_keeps_index_order_in_the_asked_dtype():
    """float32 unless asked (evaluation, tools); the pseudo-label pass asks for float16."""
    from cpcl_plugin.evaluation import FeatureCollector
    feats = torch.nn.functional.normalize(torch.randn(7, 8), dim=1)
    for dtype in (torch.float32, torch.float16):
        collector = FeatureCollector(dtype) if dtype == torch.float16 else FeatureCollector()
        collector.reset()
        for chunk in (torch.tensor([4, 5, 6]), torch.tensor([0, 1, 2, 3])):
            collector.process({"indices": chunk}, feats[chunk])
        collected = collector.evaluate()["feats"]
        assert collected.dtype == dtype and torch.equal(collected, feats.to(dtype))


def test_evaluator_leaves_out_undecodable_gallery_images():
    """Images marked valid = 0 (DATASETS.SKIP_BAD_IMAGES) are not in the gallery."""
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    g = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    qp, gp = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, 3, 1])
    ev = TextImageEvaluator(num_query=6)
    ev.reset()
    ev.process({"indices": torch.arange(6), "targets": qp}, q)
    ev.process({"indices": torch.arange(6, 11), "targets": gp,
                "valid": torch.tensor([1, 0, 1, 1, 1])}, g)
    res = ev.evaluate()
    keep = [0, 2, 3, 4]
    expected = t2i_metrics((q @ g[keep].t()).numpy(), qp.numpy(), gp[keep].numpy())
    assert res["Rank-1"] == pytest.approx(expected["R1"])
    assert res["mAP"] == pytest.approx(expected["mAP"])


def test_ranked_lists_skip_undecodable_images_and_mark_identities(monkeypatch, tmp_path):
    """TEST.VIS_TOPK pictures: each query is drawn from the ranking of the decodable gallery
    images (stable, as the metrics rank them), with their identities and its own."""
    from cpcl_plugin.evaluation import t2i_evaluation
    drawn = []

    def fake_draw(caption, order, scores, image_paths, path, topk, gallery_ids, query_id):
        drawn.append((caption, [image_paths[o] for o in order], scores,
                      [gallery_ids[o] for o in order], query_id, topk))
        return {"picture": path, "query": caption, "identity": query_id, "AP": "",
                "first_true_match": "", "top1": ""}
    monkeypatch.setattr(t2i_evaluation, "draw_query", fake_draw)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    g = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    qp, gp = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 1, 0])
    dataset = type("Split", (), {"captions": ["c0", "c1", "c2"],
                                 "image_paths": [f"img{i}.jpg" for i in range(5)]})()
    ev = TextImageEvaluator(num_query=3, ranked_lists=(dataset, 4, 3, str(tmp_path)))
    ev.reset()
    ev.process({"indices": torch.arange(3), "targets": qp}, q)
    ev.process({"indices": torch.arange(3, 8), "targets": gp,
                "valid": torch.tensor([1, 1, 0, 1, 1])}, g)
    ev.evaluate()
    keep = [0, 1, 3, 4]
    assert [d[0] for d in drawn] == ["c0", "c1", "c2"]
    for qi, (caption, paths, scores, ids, query_id, topk) in enumerate(drawn):
        sims = (q[qi] @ g[keep].t()).numpy()
        order = np.argsort(-sims, kind="stable")
        assert paths == [f"img{keep[o]}.jpg" for o in order]  # the whole ranking, for the AP
        assert np.allclose(scores, sims[order])
        assert ids == [gp[keep[o]] for o in order] and query_id == qp[qi] and topk == 4
    index = (tmp_path / "index.csv").read_text().splitlines()
    assert len(index) == 4 and index[1].startswith("query_00000.png,c0,0")


@pytest.mark.parametrize("seed", range(3))
def test_per_query_ap_of_the_pictures_averages_to_the_map(seed):
    """The AP a ranked-list picture shows is the query's share of t2i_metrics' mAP, ties
    included, and its first positive rank gives R1."""
    from cpcl_plugin.evaluation.metrics import average_precision, positive_ranks
    sim, qp, gp = random_case(seed, levels=4)
    ranks = [positive_ranks(np.argsort(-sim[i], kind="stable"), gp, qp[i]) for i in range(len(qp))]
    expected = t2i_metrics(sim, qp, gp)
    assert np.mean([average_precision(r) for r in ranks]) == pytest.approx(expected["mAP"])
    assert 100 * np.mean([r[0] == 1 for r in ranks]) == pytest.approx(expected["R1"])
    assert average_precision([]) is None
    assert average_precision([2, 5]) == pytest.approx(100 * (1 / 2 + 2 / 5) / 2)


@pytest.mark.parametrize("seed, levels", [(0, None), (1, None), (2, 5), (3, 4)])
def test_searching_galleries_of_a_few_people_pools_every_query(seed, levels):
    """TEST.IDS_PER_GALLERY: each query ranked within its own group's images, the metrics pooled
    over all queries, equal the textbook metrics of each group weighted by its queries (ties
    broken by gallery order, small chunks)."""
    from cpcl_plugin.evaluation.metrics import within_groups
    from cpcl_plugin.utils.galleries import identity_groups
    sim, qp, gp = random_case(seed, nq=60, ng=50, nids=11, levels=levels)
    qp = qp[np.argsort([list(dict.fromkeys(gp.tolist())).index(p) for p in qp], kind="stable")]
    group = identity_groups(gp, 3)
    assert sorted(set(group.values())) == [0, 1, 2, 3]  # round(11 / 3) groups, in gallery order
    ids = list(dict.fromkeys(gp.tolist()))
    assert [group[i] for i in ids] == sorted(group[i] for i in ids)
    ours = t2i_metrics(within_groups(sim, qp, gp, 3), qp, gp, chunk_elements=70)
    pooled, total = OrderedDict((k, 0.0) for k in ours), 0
    for g in set(group.values()):
        qi = np.array([group[p] == g for p in qp])
        gi = np.array([group[p] == g for p in gp])
        ref = reference_metrics(sim[qi][:, gi], qp[qi], gp[gi])
        for k in pooled:
            pooled[k] += ref[k] * qi.sum()
        total += qi.sum()
    for k in ours:
        assert ours[k] == pytest.approx(pooled[k] / total, abs=1e-9), k
    assert ours["R1"] > t2i_metrics(sim, qp, gp)["R1"]  # a smaller gallery is easier
    assert t2i_metrics(within_groups(sim, qp, gp, 100), qp, gp) == t2i_metrics(sim, qp, gp)


def test_galleries_keep_their_bounds_when_an_image_is_left_out():
    """The groups follow the queries' identities: a person whose only image could not be decoded
    (DATASETS.SKIP_BAD_IMAGES) leaves the others in the same galleries."""
    from cpcl_plugin.evaluation.metrics import within_groups
    qp = np.array([1, 1, 2, 3, 4, 4])
    gp = np.array([1, 2, 3, 4])
    sim = np.array([[0.1, 0.9, 0.5, 0.8]] * 6, dtype=np.float64)
    # galleries {1, 2} and {3, 4}; person 2's image left out: person 1 still searches {1}
    masked = within_groups(sim[:, [0, 2, 3]], qp, gp[[0, 2, 3]], 2)
    assert np.isneginf(masked[0, 1:]).all() and masked[0, 0] == 0.1
    assert masked.dtype == np.float64  # no rounding into new ties


def test_evaluator_searches_the_galleries_it_is_given():
    q = torch.nn.functional.normalize(torch.randn(8, 8), dim=1)
    g = torch.nn.functional.normalize(torch.randn(8, 8), dim=1)
    qp = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    gp = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ev = TextImageEvaluator(num_query=8, ids_per_gallery=2)
    ev.reset()
    ev.process({"indices": torch.arange(16), "targets": torch.cat([qp, gp])}, torch.cat([q, g]))
    res = ev.evaluate()
    sim = (q @ g.t()).numpy()
    expected = reference_metrics(np.where(np.equal.outer(qp.numpy() // 2, gp.numpy() // 2), sim,
                                          -np.inf), qp.numpy(), gp.numpy())
    assert res["Rank-1"] == pytest.approx(expected["R1"])
    assert res["mAP"] == pytest.approx(expected["mAP"])
