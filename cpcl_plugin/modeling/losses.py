"""Losses as pure functions of features (and, where needed, labels): tensors in, scalar out."""
import torch
import torch.nn.functional as F

__all__ = ["itc_loss"]


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
