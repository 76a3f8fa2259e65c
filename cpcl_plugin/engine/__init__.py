from .pseudo_labels import PseudoLabelHook
from .trainer import AtomicCheckpointer, CPCLTrainer, parameter_digest
