"""Text-to-image retrieval metrics, and a FastReID DatasetEvaluator that reports them.

Protocol (the field's standard, design.md section 3): every caption of the split is a query, every
image is in the gallery, similarity is cosine, every gallery image of the query's identity is a
positive, nothing is filtered. Ties are broken by gallery order (a stable sort), so the numbers are
deterministic. They equal FastReID's ``evaluate_rank`` given distance = -similarity with queries
at camid 0 and gallery at camid 1 (the tests check this).
"""
import copy
import itertools
import logging
from collections import OrderedDict

import numpy as np
import torch
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm

__all__ = ["t2i_metrics", "TextImageEvaluator", "FeatureCollector", "gather_in_index_order"]

logger = logging.getLogger(__name__)


def _rank_statistics(similarity, query_pids, gallery_pids, max_rank):
    """Per query: CMC hits at ranks 1..max_rank, average precision, inverse negative penalty."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    matches = gallery_pids[order] == query_pids[:, None]
    num_pos = matches.sum(axis=1)
    valid = num_pos > 0
    matches, num_pos = matches[valid], num_pos[valid]
    hits = np.cumsum(matches, axis=1)
    cmc = hits[:, :max_rank] > 0
    ranks = np.arange(1, matches.shape[1] + 1)
    ap = (hits / ranks * matches).sum(axis=1) / num_pos
    last_pos = matches.shape[1] - np.argmax(matches[:, ::-1], axis=1)  # 1-based rank
    inp = num_pos / last_pos
    return cmc, ap, inp, int((~valid).sum())


def t2i_metrics(similarity, query_pids, gallery_pids, ks=(1, 5, 10), chunk=1024):
    """R@k for k in `ks`, mAP and mINP, in percent, of a (num_query, num_gallery) similarity.

    Queries whose identity has no gallery image are left out (and logged), as FastReID does.
    Computed in chunks of queries, so memory stays O(chunk x num_gallery).
    """
    similarity = np.asarray(similarity)
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    if similarity.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(f"similarity has shape {similarity.shape}, but there are "
                         f"{len(query_pids)} query and {len(gallery_pids)} gallery ids.")
    max_rank = min(max(ks), similarity.shape[1])
    cmc_sum = np.zeros(max_rank)
    ap_sum = inp_sum = 0.0
    num_valid = num_skipped = 0
    for lo in range(0, len(query_pids), chunk):
        cmc, ap, inp, skipped = _rank_statistics(similarity[lo:lo + chunk],
                                                 query_pids[lo:lo + chunk], gallery_pids, max_rank)
        cmc_sum += cmc.sum(axis=0)
        ap_sum += ap.sum()
        inp_sum += inp.sum()
        num_valid += len(ap)
        num_skipped += skipped
    if num_valid == 0:
        raise ValueError("No query has a positive in the gallery: query and gallery identities "
                         "are disjoint.")
    if num_skipped:
        logger.warning(f"{num_skipped} queries have no positive in the gallery and are left out.")
    out = OrderedDict()
    for k in ks:
        out[f"R{k}"] = 100.0 * cmc_sum[min(k, max_rank) - 1] / num_valid
    out["mAP"] = 100.0 * ap_sum / num_valid
    out["mINP"] = 100.0 * inp_sum / num_valid
    return out


def gather_in_index_order(predictions, all_ranks=False):
    """Concatenate {"indices", "feats", ...} records of every rank, sorted by dataset index.

    Returns a dict of concatenated tensors, on rank 0 only (None elsewhere) unless `all_ranks`.
    """
    if comm.get_world_size() > 1:
        comm.synchronize()
        gathered = comm.all_gather(predictions) if all_ranks else comm.gather(predictions, dst=0)
        if not gathered:
            return None
        predictions = list(itertools.chain(*gathered))
    keys = predictions[0].keys()
    merged = {k: torch.cat([p[k] for p in predictions]) for k in keys}
    order = torch.as_tensor(np.argsort(merged["indices"].numpy(), kind="stable"))
    return {k: v[order] for k, v in merged.items()}


class FeatureCollector(DatasetEvaluator):
    """Collects features from `inference_on_dataset` and returns them, on every rank, as one
    tensor in dataset-index order (never in loader order)."""

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        self._predictions.append({"indices": torch.as_tensor(inputs["indices"]).cpu(),
                                  "feats": outputs.float().cpu(), "valid": _valid(inputs)})

    def evaluate(self):
        return gather_in_index_order(self._predictions, all_ranks=True)


def _valid(inputs):
    """Per item: False where the image could not be decoded (DATASETS.SKIP_BAD_IMAGES)."""
    if "valid" in inputs:
        return torch.as_tensor(inputs["valid"]).cpu().bool()
    return torch.ones(len(inputs["indices"]), dtype=torch.bool)


class TextImageEvaluator(DatasetEvaluator):
    """Collects caption and image features from `inference_on_dataset` (all ranks), then reports
    Rank-1/5/10, mAP, mINP and FastReID's ``metric`` ((mAP + Rank-1) / 2, used by its
    PeriodicCheckpointer to keep the best model)."""

    def __init__(self, num_query):
        self._num_query = num_query
        self._predictions = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        self._predictions.append({"indices": torch.as_tensor(inputs["indices"]).cpu(),
                                  "feats": outputs.float().cpu(),
                                  "pids": torch.as_tensor(inputs["targets"]).cpu(),
                                  "valid": _valid(inputs)})

    def evaluate(self):
        merged = gather_in_index_order(self._predictions)
        if merged is None or not comm.is_main_process():
            return {}
        valid = merged["valid"]
        if not valid.all():  # undecodable gallery images, skipped (DATASETS.SKIP_BAD_IMAGES)
            logger.warning(f"Evaluation leaves out {int((~valid).sum())} undecodable gallery "
                           f"images (DATASETS.SKIP_BAD_IMAGES).")
        feats, pids = merged["feats"][valid], merged["pids"][valid].numpy()
        nq = self._num_query  # captions always have features
        similarity = (feats[:nq] @ feats[nq:].t()).numpy()
        m = t2i_metrics(similarity, pids[:nq], pids[nq:])
        results = OrderedDict()
        for k in (1, 5, 10):
            results[f"Rank-{k}"] = m[f"R{k}"]
        results["mAP"] = m["mAP"]
        results["mINP"] = m["mINP"]
        results["metric"] = (m["mAP"] + m["R1"]) / 2
        return copy.deepcopy(results)
