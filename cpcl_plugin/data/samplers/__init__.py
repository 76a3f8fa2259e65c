"""Samplers, in their own package as in FastReID (`fastreid/data/samplers/`): the shuffled pass
over training pairs, the P x K pass over pseudo identities, and evaluation batches of one kind."""
from .data_sampler import EpochPairSampler, KindAwareBatchSampler
from .identity_sampler import PseudoIdentitySampler

__all__ = ["EpochPairSampler", "PseudoIdentitySampler", "KindAwareBatchSampler"]
