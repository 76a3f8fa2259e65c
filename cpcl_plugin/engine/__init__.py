from .pseudo_labels import PseudoLabelHook
from .checkpoint import (AtomicCheckpointer, load_model_weights, load_trained_model,
                         parameter_digest, write_atomically)
from .trainer import CPCLTrainer
