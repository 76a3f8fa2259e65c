"""Pseudo labels from features: pure functions on arrays, no trainer state."""
from .jaccard import cluster, clustered_features, jaccard_distance, knn, relabel_in_order
from .oplm import cooccurrence, mine_outliers, prototypes, pseudo_label_quality
