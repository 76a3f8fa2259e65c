from .pseudo_labels import PseudoLabelHook
from .trainer import CPCLTrainer
