from .build import load_trained_model
from .encoders import (TEXT_ENCODER_REGISTRY, ImageEmbeddingHead, OpenCLIPImageBackbone,
                       OpenCLIPTextEncoder, build_text_encoder, create_clip_model)
from .losses import cross_prototype_loss, intra_prototype_loss, itc_loss, sdm_loss
from .memory import PrototypeMemory, momentum_update
from .meta_arch import CPCL
