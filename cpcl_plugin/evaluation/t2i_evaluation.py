"""FastReID DatasetEvaluators for text-to-image retrieval: `TextImageEvaluator` reports the
metrics of metrics.py (and draws ranked lists); `FeatureCollector` gathers features in dataset
order."""
import copy
import itertools
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm

from ..utils.progress import track
from .metrics import t2i_metrics, within_groups
from .visualization import draw_query, write_picture_index

__all__ = ["TextImageEvaluator", "FeatureCollector", "gather_in_index_order"]

logger = logging.getLogger(__name__)


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
    tensor in dataset-index order (never in loader order), of `dtype` (float32 by default; the
    pseudo-label pass takes float16, halving the copy of every feature that each rank holds)."""

    def __init__(self, dtype=torch.float32):
        self.dtype = dtype
        self._predictions = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        self._predictions.append({"indices": torch.as_tensor(inputs["indices"]).cpu(),
                                  "feats": outputs.to(self.dtype).cpu(), "valid": _valid(inputs)})

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

    def __init__(self, num_query, ranked_lists=None, ids_per_gallery=0):
        """`ranked_lists`: None, or (dataset, topk, number of queries, folder) to draw the
        ranked lists of evenly spaced queries after each evaluation (TEST.VIS_TOPK);
        `ids_per_gallery` > 0: each caption searches only its group of about that many test
        people (TEST.IDS_PER_GALLERY; the pictures still rank the whole gallery)."""
        self._num_query = num_query
        self._ranked_lists = ranked_lists
        self._ids_per_gallery = ids_per_gallery
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
        searched = similarity
        if self._ids_per_gallery > 0:
            searched = within_groups(similarity, pids[:nq], pids[nq:], self._ids_per_gallery)
        m = t2i_metrics(searched, pids[:nq], pids[nq:])
        results = OrderedDict()
        for k in (1, 5, 10):
            results[f"Rank-{k}"] = m[f"R{k}"]
        results["mAP"] = m["mAP"]
        results["mINP"] = m["mINP"]
        results["metric"] = (m["mAP"] + m["R1"]) / 2
        if self._ranked_lists:
            gallery = merged["indices"][valid][nq:].numpy() - nq  # positions in the dataset
            self._draw(similarity, pids[:nq], pids[nq:], gallery)
        return copy.deepcopy(results)

    def _draw(self, similarity, query_pids, gallery_pids, gallery):
        """One picture per evenly spaced query (visualization.draw_query), and an index.html
        listing them; file names follow the query's position, so each evaluation redraws the
        same queries."""
        dataset, topk, num, folder = self._ranked_lists
        queries = np.unique(np.linspace(0, len(query_pids) - 1, num).astype(int))
        image_paths = [dataset.image_paths[g] for g in gallery]
        rows = []
        for q in track(queries, f"drawing the ranked lists of {len(queries)} queries",
                       unit="pictures"):
            order = np.argsort(-similarity[q], kind="stable")  # as t2i_metrics ranks them
            rows.append(draw_query(dataset.captions[q], order, similarity[q, order], image_paths,
                                   os.path.join(folder, f"query_{q:05d}.png"), topk,
                                   gallery_ids=gallery_pids, query_id=int(query_pids[q])))
        index = write_picture_index(folder, rows, append=False)
        logger.info(f"Ranked lists of {len(queries)} queries (top {topk}, ground truth, AP) "
                    f"written to {folder}; open {index}")
