from .features import encode_captions_and_images, extract_features
from .metrics import average_precision, positive_ranks, t2i_metrics
from .t2i_evaluation import FeatureCollector, TextImageEvaluator, gather_in_index_order
