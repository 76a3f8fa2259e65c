"""Prototypical Multi-modal Memory (PMM): one prototype per pseudo identity per modality, and the
co-occurrence of image and text pseudo identities that the cross-modal losses use.

Rebuilt from cluster means at the start of every epoch (by the PseudoLabelHook); after every
optimiser step, `commit` applies P[y] <- normalise(m P[y] + (1 - m) f) for each sample of the batch,
with features and labels gathered from all ranks first, so that every rank holds the same memory.
The buffers are not part of the model's state_dict (their size changes every epoch); the hook
saves them in checkpoints.
"""
import torch
import torch.nn.functional as F
from fastreid.utils import comm
from torch import nn

__all__ = ["PrototypeMemory", "momentum_update"]


def momentum_update(prototypes, features, labels, momentum):
    """P[y] <- normalise(m P[y] + (1 - m) f), one sample after the other (in place); label -1 skips."""
    for f, y in zip(features, labels.tolist()):
        if y >= 0:
            prototypes[y] = F.normalize(momentum * prototypes[y] + (1 - momentum) * f, dim=0)
    return prototypes


class PrototypeMemory(nn.Module):

    def __init__(self):
        super().__init__()
        for name in ("image_prototypes", "text_prototypes"):
            self.register_buffer(name, torch.zeros(0, 0), persistent=False)
        self.register_buffer("cooccurrence", torch.zeros(0, 0, dtype=torch.bool), persistent=False)
        self._staged = None

    @property
    def ready(self):
        """True once prototypes exist in at least one modality (a loss whose prototypes are
        missing contributes 0)."""
        return self.image_prototypes.shape[0] > 0 or self.text_prototypes.shape[0] > 0

    def rebuild(self, image_prototypes, text_prototypes, cooccurrence):
        device = self.image_prototypes.device
        self.image_prototypes = torch.as_tensor(image_prototypes, dtype=torch.float32).to(device)
        self.text_prototypes = torch.as_tensor(text_prototypes, dtype=torch.float32).to(device)
        self.cooccurrence = torch.as_tensor(cooccurrence).to(device) > 0
        self._staged = None

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
        return {"image_prototypes": self.image_prototypes.cpu(),
                "text_prototypes": self.text_prototypes.cpu(),
                "cooccurrence": self.cooccurrence.cpu()}

    def import_state(self, state):
        self.rebuild(state["image_prototypes"], state["text_prototypes"], state["cooccurrence"])
