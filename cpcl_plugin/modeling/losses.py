"""Losses as pure functions of features (and, where needed, labels): tensors in, scalar out."""
import torch
import torch.nn.functional as F

__all__ = ["itc_loss", "sdm_loss", "intra_prototype_loss", "cross_prototype_loss"]


def itc_loss(image_features, text_features, logit_scale, image_ids=None):
    """Symmetric image-text InfoNCE over a batch of pairs (CLIP's contrastive loss).

    Args:
        image_features, text_features: (B, d), L2-normalised; row i of each is one pair.
        logit_scale: scalar, 1 / temperature.
        image_ids: optional (B,) image index of each pair. Two captions of the same image in one
            batch are both positives of that image (and of each other's image row), instead of
            being pushed apart as negatives; without ids the diagonal is the only positive.
    """
    logits = logit_scale * image_features @ text_features.t()
    if image_ids is None:
        target = torch.eye(len(logits), device=logits.device, dtype=logits.dtype)
    else:
        target = (image_ids[:, None] == image_ids[None, :]).to(logits.dtype)
    target = target / target.sum(dim=1, keepdim=True)
    loss_i2t = -(F.log_softmax(logits, dim=1) * target).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(logits.t(), dim=1) * target).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def sdm_loss(image_features, text_features, logit_scale, labels, image_ids, epsilon=1e-8):
    """Similarity distribution matching (IRRA): KL from the softmax over image-text similarities
    to the label-equality distribution, both directions. `labels` are pseudo labels; a pair with
    label -1 matches the pairs of its own image only (`image_ids`), as in ITC."""
    key = torch.where(labels >= 0, labels, -1 - image_ids)  # an outlier image is its own identity
    target = (key[:, None] == key[None, :]).to(image_features.dtype)
    target = target / target.sum(dim=1, keepdim=True)
    logits = logit_scale * image_features @ text_features.t()
    loss = 0.0
    for lg in (logits, logits.t()):
        p = F.softmax(lg, dim=1)
        loss = loss + (p * (F.log_softmax(lg, dim=1) - torch.log(target + epsilon))).sum(1).mean()
    return loss / 2


def intra_prototype_loss(features, prototypes, labels, temperature):
    """CE(f . P^T / tau, y) over the samples with a label (>= 0); 0 when there are none."""
    ok = labels >= 0
    if not ok.any() or prototypes.shape[0] == 0:
        return features.sum() * 0.0
    logits = features[ok] @ prototypes.t() / temperature
    return F.cross_entropy(logits, labels[ok])


def cross_prototype_loss(features, other_prototypes, labels, cooccurring, temperature):
    """Many-to-many cross-modal prototype loss: -log of the softmax mass (over the other modality's
    prototypes) that falls on the prototypes co-occurring with the sample's own label.

    `cooccurring` is (B, K_other) boolean, row i the other modality's labels that co-occur with
    labels[i] (PrototypeMemory.cooccurring_texts / cooccurring_images: only the batch's rows of
    the co-occurrence, never the K_own x K_other matrix). Samples without a label, or whose label
    co-occurs with nothing, are left out; 0 when none is left.
    """
    ok = (labels >= 0) & cooccurring.any(dim=1)
    if not ok.any() or other_prototypes.shape[0] == 0:
        return features.sum() * 0.0
    log_p = F.log_softmax(features[ok] @ other_prototypes.t() / temperature, dim=1)
    return -torch.logsumexp(log_p.masked_fill(~cooccurring[ok], float("-inf")), dim=1).mean()
