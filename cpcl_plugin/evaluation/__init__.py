from .features import encode_captions_and_images, extract_features
from .t2i_evaluation import FeatureCollector, TextImageEvaluator, gather_in_index_order, t2i_metrics
