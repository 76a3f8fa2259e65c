"""How the ranks of a shared pseudo-label pass meet: through one collective, `all_gather`, a
function that every rank calls in the same order and that returns the list of every rank's
(picklable) object, in rank order. One process passes `one_process`. The process group stays
with the caller (engine/pseudo_labels.py passes FastReID's `comm.all_gather`), so the clustering
remains arrays in, arrays out, and threads can stand in for ranks in tests."""

__all__ = ["one_process", "gathered", "FailedElsewhere"]


class FailedElsewhere(RuntimeError):
    """Raised by `gathered` on the ranks whose own part succeeded, when another rank's failed."""


def one_process(obj):
    """`all_gather` of a single process: its own object."""
    return [obj]


def gathered(all_gather, contribute):
    """[what `contribute()` returned on each rank], in rank order. An exception on any rank is
    raised on every rank after the exchange, so that no rank is left waiting in a collective that
    another has left: its own exception on the failing rank, elsewhere `FailedElsewhere` naming
    the rank and its error."""
    own = None
    try:
        mine = (None, contribute())
    except Exception as err:  # sent as text: not every exception pickles
        own, mine = err, (f"{type(err).__name__}: {err}", None)
    everyone = all_gather(mine)
    if own is not None:
        raise own
    for rank, (problem, _) in enumerate(everyone):
        if problem is not None:
            raise FailedElsewhere(f"the pseudo-label pass failed on rank {rank}: {problem}")
    return [result for _, result in everyone]
