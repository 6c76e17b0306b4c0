from itertools import islice

from adet.data.samplers import InferenceSampler, TrainingBatchSampler


def take(sampler, n):
    return list(islice(iter(sampler), n))


def test_training_order_is_deterministic_and_resumable():
    groups = [0] * 10
    full = take(TrainingBatchSampler(groups, 3, seed=7, rank=0, world_size=1), 12)
    assert full == take(TrainingBatchSampler(groups, 3, seed=7, rank=0, world_size=1), 12)
    assert full != take(TrainingBatchSampler(groups, 3, seed=8, rank=0, world_size=1), 12)
    assert take(TrainingBatchSampler(groups, 3, seed=7, rank=0, world_size=1, start_iter=5), 7) == full[5:]
    # Every index appears once per epoch; positions count up globally.
    first_epoch = [i for batch in full[:3] for i, _ in batch][:10]
    assert sorted(first_epoch[:9] + [i for i, _ in full[3]][:1]) == list(range(10))
    assert [p for batch in full for _, p in batch] == list(range(36))


def test_ranks_split_the_single_process_batches():
    groups = [0] * 9
    single = take(TrainingBatchSampler(groups, 4, seed=3, rank=0, world_size=1), 5)
    rank0 = take(TrainingBatchSampler(groups, 2, seed=3, rank=0, world_size=2), 5)
    rank1 = take(TrainingBatchSampler(groups, 2, seed=3, rank=1, world_size=2), 5)
    for whole, a, b in zip(single, rank0, rank1):
        assert sorted(whole) == sorted(a + b)


def test_aspect_ratio_groups_never_mix():
    groups = [0, 1] * 10
    for batch in take(TrainingBatchSampler(groups, 4, seed=0, rank=0, world_size=1), 20):
        assert len({groups[i] for i, _ in batch}) == 1


def test_inference_shards_cover_everything_once():
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
