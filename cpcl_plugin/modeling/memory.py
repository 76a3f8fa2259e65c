"""Prototypical Multi-modal Memory (PMM): one prototype per pseudo identity per modality, and the
co-occurrence of image and text pseudo identities that the cross-modal losses use.

Rebuilt from cluster means at the start of every epoch (by the PseudoLabelHook); after every
optimiser step, `commit` applies P[y] <- normalise(m P[y] + (1 - m) f) for each sample of the batch,
with features and labels gathered from all ranks first, so that every rank holds the same memory.
The buffers are not part of the model's state_dict (their size changes every epoch); the hook
saves them in checkpoints.

The co-occurrence is kept sparse, as CSR index tensors in both directions (image label -> text
labels, text label -> image labels): a dense K_v x K_t matrix would not fit at pretraining scale
(~150k clusters per modality), while the non-zeros number at most the pairs. The losses get only
the (batch, K_other) rows of their batch's labels (`cooccurring_texts`, `cooccurring_images`).
"""
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from fastreid.utils import comm
from torch import nn

__all__ = ["PrototypeMemory", "momentum_update", "csr_rows_mask"]


def momentum_update(prototypes, features, labels, momentum):
    """P[y] <- normalise(m P[y] + (1 - m) f), one sample after the other (in place); label -1 skips."""
    for f, y in zip(features, labels.tolist()):
        if y >= 0:
            prototypes[y] = F.normalize(momentum * prototypes[y] + (1 - momentum) * f, dim=0)
    return prototypes


def csr_rows_mask(indptr, indices, rows, num_columns):
    """(len(rows), num_columns) bool: row i is True at the columns of CSR row rows[i] (given by
    `indptr`, `indices`), all False where rows[i] < 0. On the device of `indptr`."""
    rows = rows.to(indptr.device)
    safe = rows.clamp(min=0)
    starts = indptr[safe]
    lengths = torch.where(rows >= 0, indptr[safe + 1] - starts, torch.zeros_like(starts))
    which = torch.repeat_interleave(torch.arange(len(rows), device=indptr.device), lengths)
    # Position of each entry within its row: a running count, restarted at every row.
    first = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(len(which), device=indptr.device) - first[which]
    mask = torch.zeros(len(rows), num_columns, dtype=torch.bool, device=indptr.device)
    mask[which, indices[starts[which] + within]] = True
    return mask


def _csr_tensors(matrix):
    """(indptr, indices) int64 tensors of a scipy CSR matrix, column indices sorted per row."""
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    return (torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)))


class PrototypeMemory(nn.Module):

    _COOCCURRENCE = ("image_to_text_indptr", "image_to_text_indices",
                     "text_to_image_indptr", "text_to_image_indices")

    def __init__(self):
        super().__init__()
        for name in ("image_prototypes", "text_prototypes"):
            self.register_buffer(name, torch.zeros(0, 0), persistent=False)
        for name in self._COOCCURRENCE:
            self.register_buffer(name, torch.zeros(1 if name.endswith("indptr") else 0,
                                                   dtype=torch.int64), persistent=False)
        self._staged = None

    @property
    def ready(self):
        """True once prototypes exist in at least one modality (a loss whose prototypes are
        missing contributes 0)."""
        return self.image_prototypes.shape[0] > 0 or self.text_prototypes.shape[0] > 0

    def rebuild(self, image_prototypes, text_prototypes, cooccurrence):
        """`cooccurrence`: the (K_v, K_t) co-occurrence, a scipy sparse matrix (oplm.cooccurrence)
        or a dense array or tensor; only where it is non-zero matters."""
        device = self.image_prototypes.device
        self.image_prototypes = torch.as_tensor(image_prototypes, dtype=torch.float32).to(device)
        self.text_prototypes = torch.as_tensor(text_prototypes, dtype=torch.float32).to(device)
        if isinstance(cooccurrence, torch.Tensor):
            cooccurrence = cooccurrence.cpu().numpy()
        A = sp.csr_matrix(cooccurrence, dtype=np.int64)
        A.eliminate_zeros()
        for name, t in zip(self._COOCCURRENCE, _csr_tensors(A) + _csr_tensors(A.T.tocsr())):
            setattr(self, name, t.to(device))
        self._staged = None

    def cooccurring_texts(self, image_labels):
        """(B, K_t) bool: the text labels co-occurring with each image label (none for -1)."""
        return csr_rows_mask(self.image_to_text_indptr, self.image_to_text_indices, image_labels,
                             self.text_prototypes.shape[0])

    def cooccurring_images(self, text_labels):
        """(B, K_v) bool: the image labels co-occurring with each text label (none for -1)."""
        return csr_rows_mask(self.text_to_image_indptr, self.text_to_image_indices, text_labels,
                             self.image_prototypes.shape[0])

    def stage(self, image_features, text_features, image_labels, text_labels):
        """Remember this step's (detached) features and labels for `commit` after the step."""
        self._staged = (image_features.detach(), text_features.detach(), image_labels, text_labels)

    @torch.no_grad()
    def commit(self, momentum):
        """The momentum update with the staged batch of every rank (in rank order)."""
        if self._staged is None or not self.ready:
            self._staged = None
            return
        staged = [t.cpu() for t in self._staged]
        if comm.get_world_size() > 1:
            everything = comm.all_gather(staged)
            staged = [torch.cat([s[i] for s in everything]) for i in range(4)]
        fv, ft, a, b = (t.to(self.image_prototypes.device) for t in staged)
        momentum_update(self.image_prototypes, fv.float(), a, momentum)
        momentum_update(self.text_prototypes, ft.float(), b, momentum)
        self._staged = None

    def export_state(self):
        """Tensors only (checkpoints are read with torch.load(weights_only=True)): the prototypes
        and the image -> text CSR of the co-occurrence; the other direction follows from it."""
        return {"image_prototypes": self.image_prototypes.cpu(),
                "text_prototypes": self.text_prototypes.cpu(),
                "image_to_text_indptr": self.image_to_text_indptr.cpu(),
                "image_to_text_indices": self.image_to_text_indices.cpu()}

    def import_state(self, state):
        """`state` from export_state, or from a checkpoint of before the sparse memory, whose
        co-occurrence is a dense bool tensor ("cooccurrence")."""
        if "cooccurrence" in state:
            cooccurrence = state["cooccurrence"]
        else:
            indptr, indices = (state[k].numpy() for k in ("image_to_text_indptr",
                                                          "image_to_text_indices"))
            cooccurrence = sp.csr_matrix((np.ones(len(indices), dtype=np.int64), indices, indptr),
                                         shape=(len(indptr) - 1, state["text_prototypes"].shape[0]))
        self.rebuild(state["image_prototypes"], state["text_prototypes"], cooccurrence)
