"""How a test split is cut into galleries (TEST.IDS_PER_GALLERY): shared by the evaluation, which
searches them, and the synthetic generator, which pairs its test lookalikes within them."""
import numpy as np

__all__ = ["gallery_parts"]


def gallery_parts(num_ids, ids_per_gallery):
    """The positions 0..num_ids-1 cut into max(1, round(num_ids / ids_per_gallery)) consecutive
    parts of near-equal size (np.array_split)."""
    return np.array_split(np.arange(num_ids), max(1, int(round(num_ids / ids_per_gallery))))
