"""Pseudo labels from features: pure functions on arrays, no trainer state."""
from .jaccard import (EXACT_SEARCH_MAX, cluster, jaccard_distance, outliers_as_singletons,
                      relabel_in_order)
from .neighbours import (SEARCHES, SearchShare, knn, knn_share, resolve_search, row_share,
                         sampled_recall, search_rule)
from .oplm import cooccurrence, mine_outliers, prototypes, pseudo_label_quality
