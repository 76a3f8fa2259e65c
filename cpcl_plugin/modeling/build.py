"""A trained model for inference: the config's model with every weight from MODEL.WEIGHTS."""
import logging

from fastreid.modeling.meta_arch import build_model

from ..errors import ConfigError
from ..utils.checkpoint import load_model_weights
from ..utils.progress import quiet_logger
from .pretrained import is_recipe, without_pretrained_weights

__all__ = ["load_trained_model"]

logger = logging.getLogger(__name__)


def load_trained_model(cfg, needed_by):
    """The config's model with the weights of MODEL.WEIGHTS, in eval mode, for the tools that
    use a trained model (`needed_by` names the tool in the message when MODEL.WEIGHTS is empty)."""
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError(f"{needed_by} needs a trained model: add MODEL.WEIGHTS "
                          f"path/to/model_final.pth.")
    if is_recipe(cfg.MODEL.CLIP.PRETRAINED):
        # Every weight comes from MODEL.WEIGHTS: a pretraining config need not be trained first.
        cfg = without_pretrained_weights(cfg)
    # Every weight comes from MODEL.WEIGHTS: the towers' "random initialisation" lines would
    # mislead.
    with quiet_logger("cpcl_plugin.modeling"):
        model = build_model(cfg)
    load_model_weights(model, cfg.MODEL.WEIGHTS, training=False)
    logger.info(f"Model weights from MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}")
    return model.eval()
