from .encoders import (TEXT_ENCODER_REGISTRY, ImageEmbeddingHead, OpenCLIPImageBackbone,
                       OpenCLIPTextEncoder, build_text_encoder, create_clip_model)
from .losses import itc_loss
from .meta_arch import CPCL
