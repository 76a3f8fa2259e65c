"""How a test split is cut into galleries (TEST.IDS_PER_GALLERY): shared by the evaluation, which
searches them, the caption ceiling and chance R1, which search them too, and the synthetic
generator, which pairs its test lookalikes within them."""
import numpy as np

__all__ = ["gallery_parts", "identity_groups"]


def gallery_parts(num_ids, ids_per_gallery):
    """The positions 0..num_ids-1 cut into max(1, round(num_ids / ids_per_gallery)) consecutive
    parts of near-equal size (np.array_split); one part where `ids_per_gallery` is 0 (one
    gallery, the default protocol)."""
    parts = round(num_ids / ids_per_gallery) if ids_per_gallery > 0 else 1
    return np.array_split(np.arange(num_ids), max(1, int(parts)))


def identity_groups(pids, ids_per_gallery):
    """{identity: gallery index}: the identities of `pids`, in order of first appearance, in the
    consecutive parts of `gallery_parts`."""
    ids = list(dict.fromkeys(np.asarray(pids).tolist()))
    return {ids[i]: g for g, part in enumerate(gallery_parts(len(ids), ids_per_gallery))
            for i in part}
