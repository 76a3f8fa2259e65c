from .t2i_evaluation import TextImageEvaluator, t2i_metrics
