from .trainer import AtomicCheckpointer, CPCLTrainer, parameter_digest
