"""The pseudo-label pass built to scale (issues 13 and 22): kNN and the DBSCAN graph shared across
ranks, identical to one process; prototypes from per-rank shares of the rows combined by one all-reduce, identical on every
rank; float16 features; the peak-memory measurement."""
import glob
import mmap

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastreid.utils import comm

from cpcl_plugin import compat
from cpcl_plugin.clustering import cluster, knn_share
from cpcl_plugin.engine.pseudo_labels import memory_contents, shared_neighbours
from cpcl_plugin.modeling import PrototypeMemory
from cpcl_plugin.utils import memory
from cpcl_plugin.utils.memory import PeakMemory
from feature_distributions import clustered_features  # benchmarks/, on the path by conftest

WORLD_SIZE = 2


def _inputs():
    """101 images (an odd count: the ranks' shares differ in size), 1-3 captions each, labels with
    outliers and a label whose members all fall in one rank's share; float16 features."""
    rng = np.random.default_rng(0)
    pair_image = np.repeat(np.arange(101), rng.integers(1, 4, 101))
    image_labels = rng.integers(-1, 9, 101)
    image_labels[:10] = 9  # only in rank 0's share
    text_labels = rng.integers(-1, 12, len(pair_image))
    features = [rng.normal(size=(n, 16)) for n in (101, len(pair_image))]
    image_f, text_f = (f / np.linalg.norm(f, axis=1, keepdims=True) for f in features)
    return image_f.astype(np.float16), text_f.astype(np.float16), image_labels, text_labels, \
        pair_image


def _memory_state(image_f, text_f, image_labels, text_labels, pair_image, rank, world_size):
    memory = PrototypeMemory()
    memory.rebuild(*memory_contents(image_f, text_f, image_labels, text_labels, pair_image,
                                    rank, world_size))
    return memory.export_state()


def _search_inputs():
    """Features whose searches cross rank boundaries: 5,000 rows (3 blocks of 2,048 rows for the
    exact search's shares), float16 as the pass stores them, with runs of exact duplicates (ties
    that must resolve the same way on every share)."""
    x = clustered_features(5000, d=64, seed=3)
    x[100:160] = x[99]
    x[2040:2060] = x[4990]  # duplicates on both sides of a share boundary
    return x.astype(np.float16)


# name: (search, options). The approximate search as configured (no recall target), widened by its
# recall target (the ranks sum their sampled recall and widen alike), and turned exact by it.
SEARCHES = {"exact": ("exact", {}),
            "approximate": ("approximate", {"nprobe": 4, "min_recall": 0}),
            "widened": ("approximate", {"nprobe": 4, "min_recall": 0.6}),
            "turned exact": ("approximate", {"nprobe": 4, "min_recall": 0.999})}


def _rank_worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        torch.save(_memory_state(*_inputs(), rank, WORLD_SIZE), f"{folder}/memory_{rank}.pth")
        x = _search_inputs()
        for name, (search, options) in SEARCHES.items():
            lists, how = shared_neighbours(x, 30, search, options, rank, WORLD_SIZE)
            torch.save(how._asdict(), f"{folder}/{name} search {rank}.pth")
            np.save(f"{folder}/{name} {rank}.npy", lists)
            # The clustering shared by the ranks, from the lists every rank holds.
            labels = cluster(x, neighbours=lists, rank=rank, world_size=WORLD_SIZE,
                             all_gather=comm.all_gather)
            np.save(f"{folder}/{name} labels {rank}.npy", labels)
    finally:
        compat.leave_process_group()  # FastReID's cached gloo group too
    gloo_threads = [name for name in _thread_names() if "gloo" in name]
    assert not gloo_threads, f"rank {rank}: gloo threads outlive the process group: {gloo_threads}"


def _thread_names():
    names = []
    for comm_file in glob.glob("/proc/self/task/*/comm"):
        try:
            with open(comm_file) as f:
                names.append(f.read().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    return names


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-process gloo run of everything the ranks share (spawning costs the imports)."""
    folder = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_rank_worker, args=(str(folder),), nprocs=WORLD_SIZE, join=True)
    return folder


@pytest.mark.parametrize("name", list(SEARCHES))
def test_two_ranks_find_the_neighbours_and_labels_of_one_process(two_ranks, name):
    x = _search_inputs()
    search, options = SEARCHES[name]
    single = knn_share(x, 30, search, 0, 1, **options)
    for rank in range(WORLD_SIZE):  # every rank holds all the lists
        shared = np.load(two_ranks / f"{name} {rank}.npy")
        assert np.array_equal(shared, single.lists)
        labels = np.load(two_ranks / f"{name} labels {rank}.npy")
        assert np.array_equal(labels, cluster(x, search=search, **options))
    assert labels.max() >= 1  # the case clusters at all
    assert np.array_equal(shared[:, 0], np.arange(len(x)))  # each row's own index first
    # Both ranks measured the recall of the whole search and chose alike, as one process does.
    hows = [torch.load(two_ranks / f"{name} search {r}.pth", weights_only=False)
            for r in range(WORLD_SIZE)]
    expected = single._replace(rows=None, lists=None)._asdict()
    for how in hows:
        assert how == expected
    searched, widenings = {"exact": ("exact", 0), "approximate": ("approximate", 1),
                           "widened": ("approximate", 3), "turned exact": ("exact", 4)}[name]
    assert hows[0]["search"] == searched and len(hows[0]["tried"]) == widenings


def test_two_ranks_build_bit_identical_memory_equal_to_one_process(two_ranks):
    tmp_path = two_ranks
    states = [torch.load(tmp_path / f"memory_{r}.pth", weights_only=True)
              for r in range(WORLD_SIZE)]
    single = _memory_state(*_inputs(), 0, 1)
    assert states[0].keys() == states[1].keys() == single.keys()
    for key in single:
        assert torch.equal(states[0][key], states[1][key]), key  # the same bits on every rank
        assert torch.allclose(states[0][key], single[key], rtol=0, atol=1e-6), key
    assert single["image_prototypes"].shape == (10, 16)  # float16 in, float32 prototypes out
    assert single["image_prototypes"].dtype == torch.float32


def test_prototypes_from_float16_features_match_float32():
    image_f, text_f, *rest = _inputs()
    half = memory_contents(image_f, text_f, *rest)
    full = memory_contents(image_f.astype(np.float32), text_f.astype(np.float32), *rest)
    for h, f in zip(half[:2], full[:2]):
        assert np.array_equal(h, f)  # float16 values are exact in float32: the same sums
    assert (half[2] != full[2]).nnz == 0


def _touched_pages(size):
    """`size` bytes of anonymous memory of their own, every page written: resident memory the
    process did not hold before (a malloc'ed array may reuse pages freed earlier in a long-lived
    process, whose resident memory then does not grow), returned to the system on close."""
    block = mmap.mmap(-1, size)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    return block


def test_peak_memory_is_that_of_the_measured_stretch():
    peak = PeakMemory()
    assert peak.since_start  # Linux: the resident peak can be restarted
    start = peak.gigabytes()[0]  # the memory resident at the restart
    block = _touched_pages(128 << 20)
    resident, cuda = peak.gigabytes()
    block.close()
    later = PeakMemory()  # restarted after the block is unmapped: it is not in this peak
    assert resident > start + 0.1 and later.gigabytes()[0] < resident - 0.1
    assert (cuda is None) == (not torch.cuda.is_available() or not torch.cuda.is_initialized())


@pytest.mark.parametrize("clear_refs", ["missing/clear_refs", "clear_refs"])
def test_peak_memory_says_when_it_is_the_lifetime_peak(tmp_path, monkeypatch, clear_refs):
    """A clear_refs that cannot be written, or a write without effect (a plain file here):
    the peak is not restarted, and `since_start` says so."""
    monkeypatch.setattr(memory, "_CLEAR_REFS", str(tmp_path / clear_refs))
    _touched_pages(64 << 20).close()  # the lifetime peak is now above the resident memory
    peak = PeakMemory()
    assert not peak.since_start
    resident_now = memory._status_kb("VmRSS")[0] / (1 << 20)
    assert peak.gigabytes()[0] > resident_now + 0.06  # the earlier peak, with the block
