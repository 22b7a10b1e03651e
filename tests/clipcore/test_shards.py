"""Shards to batches: mixing, query frames and embeddings, determinism, epochs, corrupt data, DDP."""

import io
import multiprocessing
import re
import socket
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from clipcore import synthetic
from clipcore.datamodule import ShardDataModule
from clipcore.shard_stream import CorruptSampleWarning, MixBatch, ShardStream
from clipcore.shards import ShardError, distinct_key_ids, expand_shards

RATE = 16000
SEGMENT = 8000
CLIP_SECONDS = 3.0  # frames at 0.5, 1.5, 2.5 s


class IndexEncoder:
    """Stand-in image encoder: frame k of a clip embeds as the one-hot vector e_k, so the
    averaged embedding a batch carries tells which frames were chosen."""

    name = "index-encoder"

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.eye(len(images), 8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    paths = synthetic.write_toy_shards(
        root, 12, seed=0, shard_size=4, encoder=IndexEncoder(), duration=CLIP_SECONDS, frame_size=48
    )
    return root, paths


def _members(paths) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for info in tar:
                key, suffix = info.name.split(".", 1)
                samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return samples


def _stored_audio(members, key) -> np.ndarray:
    return sf.read(io.BytesIO(members[key]["flac"]), dtype="float32")[0]


def _find_crop(clip: np.ndarray, segment: np.ndarray) -> tuple[int, float]:
    """Offset and gain of the window of ``clip`` that best matches ``segment`` (FFT correlation)."""
    size = 2 * len(clip)
    corr = np.fft.irfft(np.fft.rfft(clip, size) * np.conj(np.fft.rfft(segment, size)), size)
    corr = corr[: len(clip) - len(segment) + 1]
    energy = np.convolve(clip**2, np.ones(len(segment)), "valid") + 1e-12
    offset = int(np.argmax(corr**2 / energy))
    return offset, float(corr[offset] / energy[offset])


def _stream(shards, **kwargs) -> ShardStream:
    settings = dict(batch_size=3, segment_samples=SEGMENT, sample_rate=RATE, shuffle_buffer=8, frame_size=48)
    settings.update(kwargs)
    return ShardStream(shards, **settings)


def test_mixture_is_the_sum_of_clip_crops_scaled_by_gains(shards):
    root, paths = shards
    members = _members(paths)
    batches = list(_stream(str(root), num_sources=2, epoch_length=4, seed=1))
    assert len(batches) == 4
    for batch in batches:
        assert batch.mixture.shape == (3, SEGMENT) and batch.sources.shape == (3, 2, SEGMENT)
        assert batch.frames.shape == (3, 2, 3, 3, 48, 48) and batch.frames.dtype == torch.uint8
        assert batch.embeddings is None
        torch.testing.assert_close(batch.mixture, batch.sources.sum(1))
        for b in range(3):
            for n in range(2):
                source, clip = batch.sources[b, n].numpy(), _stored_audio(members, batch.keys[b][n])
                # find the crop: the offset where the scaled clip matches the source
                offset, gain = _find_crop(clip, source)
                assert np.abs(gain * clip[offset : offset + SEGMENT] - source).max() < 1e-5
                assert 0.25 <= gain <= 0.75
                assert batch.labels[b][n] == synthetic.INSTRUMENTS[int(batch.keys[b][n].split("/")[1]) % 8]


def test_one_source_is_the_clip_itself_without_gain(shards):
    root, paths = shards
    members = _members(paths)
    batches = list(_stream(paths, num_sources=1, query_frames=1, train=False))
    assert sum(len(b) for b in batches) == 12  # one pass: every clip once
    for batch in batches:
        assert batch.sources.shape[1] == 1 and batch.frames.shape[2] == 1
        assert torch.equal(batch.mixture, batch.sources[:, 0])
        for b, (key,) in enumerate(batch.keys):
            clip = _stored_audio(members, key)
            start = (len(clip) - SEGMENT) // 2  # validation crops are centred
            assert np.array_equal(batch.mixture[b].numpy(), clip[start : start + SEGMENT])


def test_embeddings_average_the_same_frames_that_are_delivered(shards):
    root, paths = shards
    members = _members(paths)
    with_embeddings = list(_stream(str(root), encoder="index-encoder", query_frames=2, epoch_length=3, seed=5))
    with_frames = list(_stream(str(root), query_frames=2, epoch_length=3, seed=5))
    for a, b in zip(with_embeddings, with_frames):
        assert a.frames is None and a.embeddings.shape == (3, 2, 8) and a.embeddings.dtype == torch.float32
        assert a.keys == b.keys and torch.equal(a.mixture, b.mixture)
        for i in range(3):
            for n in range(2):
                chosen = torch.nonzero(a.embeddings[i, n]).flatten().tolist()
                assert len(chosen) == 2 and chosen[1] == chosen[0] + 1  # consecutive
                assert torch.allclose(a.embeddings[i, n, chosen], torch.full((2,), 0.5))
                jpegs = members[a.keys[i][n]]
                for slot, k in enumerate(chosen):
                    expected = np.asarray(Image.open(io.BytesIO(jpegs[f"{k}.jpg"])).convert("RGB"))
                    assert np.array_equal(b.frames[i, n, slot].permute(1, 2, 0).numpy(), expected)


def test_shards_at_another_rate_are_resampled(tmp_path):
    (path,) = synthetic.write_toy_shards(tmp_path, 2, seed=2, duration=1.0, sample_rate=8000, frame_size=32)
    (batch,) = _stream(str(path), num_sources=1, query_frames=1, train=False, segment_samples=RATE, batch_size=2,
                       frame_size=32)
    assert batch.mixture.shape == (2, RATE)
    for wave, (key,) in zip(batch.mixture.numpy(), batch.keys):
        power = np.abs(np.fft.rfft(wave)) ** 2  # 1 Hz bins
        clip = synthetic.make_clip(int(key.split("/")[1]), seed=2, duration=1.0, sample_rate=8000, frame_size=32)
        assert power[4100:].sum() < 1e-4 * power.sum()  # nothing above the old Nyquist
        np.testing.assert_allclose(wave[::2], clip.audio, atol=0.05)


def test_deterministic_by_seed(shards):
    root, _ = shards
    first = list(_stream(str(root), epoch_length=2, seed=3))
    again = list(_stream(str(root), epoch_length=2, seed=3))
    other = list(_stream(str(root), epoch_length=2, seed=4))
    assert [b.keys for b in first] == [b.keys for b in again]
    assert all(torch.equal(x.mixture, y.mixture) for x, y in zip(first, again))
    assert not all(torch.equal(x.mixture, y.mixture) for x, y in zip(first, other))


@pytest.mark.parametrize("encoder", ["index-encoder", None])
def test_a_stream_held_in_memory_gives_the_same_batches_and_reads_the_shards_once(shards, tmp_path, encoder):
    root, paths = shards
    for train, epoch_length in ((True, 3), (False, None)):
        for path in paths:
            (tmp_path / path.name).write_bytes(path.read_bytes())
        plain = _stream(str(root), num_sources=2, seed=5, train=train, epoch_length=epoch_length, encoder=encoder)
        held = _stream(str(tmp_path), num_sources=2, seed=5, train=train, epoch_length=epoch_length, encoder=encoder,
                         in_memory=True)
        for epoch in range(2):
            plain.epoch = held.epoch = epoch
            expected, got = list(plain), list(held)
            assert len(got) == len(expected) > 0
            for x, y in zip(expected, got):
                assert x.keys == y.keys
                assert torch.equal(x.sources, y.sources)
                query = (x.frames, y.frames) if encoder is None else (x.embeddings, y.embeddings)
                assert torch.equal(*query)
            if epoch == 0:  # the next epoch comes from memory
                for path in paths:
                    (tmp_path / path.name).write_bytes(b"")


def test_fixed_epoch_length_with_workers_and_new_mixtures_each_epoch(shards):
    root, _ = shards
    data = ShardDataModule(train_shards=f"{root}/*.tar", batch_size=2, num_workers=2, epoch_length=5,
                           segment_samples=SEGMENT, query_frames=1, shuffle_buffer=8, frame_size=48)
    loader = data.train_dataloader()
    assert len(loader) == 5
    epochs = [[b.keys for b in loader] for _ in range(2)]
    assert [len(e) for e in epochs] == [5, 5]
    assert epochs[0] != epochs[1]


def test_the_training_data_follows_the_runs_seed_and_validation_stays(shards):
    """A training seed (``seed_everything``) varies the training mixtures, not the validation
    ones; ``data.seed`` pins both."""
    from lightning.pytorch import seed_everything

    root, paths = shards

    def keys(seed_run, **settings):
        seed_everything(seed_run)
        data = ShardDataModule(train_shards=f"{root}/*.tar", val_shards=paths[:1], batch_size=2, num_workers=0,
                               epoch_length=4, segment_samples=SEGMENT, query_frames=1, shuffle_buffer=8,
                               frame_size=48, **settings)
        return [b.keys for b in data.train_dataloader()], [b.keys for b in data.val_dataloader()]

    (train_1, val_1), (train_2, val_2) = keys(1), keys(2)
    assert train_1 != train_2 and val_1 == val_2
    assert keys(1) == (train_1, val_1)
    assert keys(1, seed=7) == keys(2, seed=7)


def test_a_training_mixture_never_holds_one_clip_twice(shards):
    """Resampled reads of a small data set (a fine-tuning library) repeat clips; mixed as
    they came, 7% of mixtures held two copies of one clip, two sources with one query."""
    _, paths = shards
    batches = list(_stream(str(paths[0]), num_sources=2, epoch_length=40, seed=0))  # 4 clips
    mixtures = [keys for batch in batches for keys in batch.keys]
    assert len(mixtures) == 120 and all(len(set(keys)) == 2 for keys in mixtures)  # batches of 3
    (path,) = synthetic.write_toy_shards(paths[0].parent / "one", 1, seed=3, duration=1.0, frame_size=48)
    alone = [keys for batch in _stream(str(path), num_sources=2, epoch_length=70, seed=0) for keys in batch.keys]
    assert len(alone) == 210  # a data set of one clip: beyond the clips held back, it meets itself


def test_one_pass_splits_few_shards_by_sample_among_workers(shards):
    root, paths = shards
    for spec in (paths[:1], paths):  # fewer shards than workers, then more
        data = ShardDataModule(val_shards=spec, num_sources=1, batch_size=2, num_workers=2, query_frames=1,
                               segment_samples=SEGMENT, frame_size=48)
        keys = [k for batch in data.val_dataloader() for (k,) in batch.keys]
        assert sorted(keys) == sorted(_members(spec))



def test_every_rank_validates_on_all_samples_as_one_process_does(shards, monkeypatch):
    """README (Scale-out): validation reads all validation shards on every GPU, so its
    metrics equal single-GPU ones. Each rank of two (as the loader learns it from
    ``torch.distributed``) gets the batches one process gets: the same keys, mixtures and
    sources, sample for sample."""
    _, paths = shards
    settings = dict(val_shards=[str(p) for p in paths[:2]], num_sources=2, batch_size=2, num_workers=2,
                    query_frames=1, segment_samples=SEGMENT, frame_size=48)

    def batches():
        return list(ShardDataModule(**settings).val_dataloader())

    single = batches()
    assert sum(len(b) for b in single) == 4  # 8 clips, two per mixture: all of them
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        ranked = batches()
        assert [b.keys for b in ranked] == [b.keys for b in single], rank
        for got, want in zip(ranked, single):
            assert torch.equal(got.mixture, want.mixture) and torch.equal(got.sources, want.sources)

def _rewrite(src, dst, damage):
    """Copy a shard, letting ``damage(name, data)`` replace or drop (None) members."""
    with tarfile.open(src) as tar_in, tarfile.open(dst, "w") as tar_out:
        for info in tar_in:
            data = damage(info.name, tar_in.extractfile(info).read())
            if data is not None:
                info.size = len(data)
                tar_out.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("in_memory", [False, True])
def test_corrupt_members_and_shards_are_skipped_counted_and_warned(shards, tmp_path, in_memory):
    root, paths = shards
    keys = sorted(_members(paths[:1]))

    def damage(name, data):
        if name == f"{keys[0]}.flac":
            return b"garbage" * 50
        if name == f"{keys[1]}.json":
            return b"{not json"
        if name == f"{keys[2]}.index-encoder.npy":
            return None
        if name.startswith(f"{keys[3]}.") and name.endswith(".jpg"):
            return data[: len(data) // 3]
        return data

    _rewrite(paths[0], tmp_path / "a.tar", damage)
    with tarfile.open(paths[1]) as tar:  # cut inside the data of a member half-way through
        middle = tar.getmembers()[len(tar.getmembers()) // 2]
    (tmp_path / "b.tar").write_bytes(paths[1].read_bytes()[: middle.offset_data + middle.size // 2])
    survivors = set(_members(paths[:2])) - set(keys)
    for encoder, bad in (("index-encoder", keys[:3]), (None, keys[:2] + keys[3:])):
        stream = _stream(f"{tmp_path}/*.tar", num_sources=1, query_frames=3, train=False, encoder=encoder,
                         in_memory=in_memory)
        with pytest.warns(CorruptSampleWarning) as caught:
            batches = list(stream)
        delivered = {k for batch in batches for (k,) in batch.keys}
        assert delivered.isdisjoint(bad) and set(keys) - set(bad) <= delivered
        lost = survivors - delivered
        assert lost  # the truncated shard lost samples, and the stream counted that
        assert stream.skipped >= len(bad) + 1
        assert sum(batch.skipped for batch in batches) == stream.skipped
        assert all(any(key in str(w.message) for w in caught) for key in bad)


def test_a_systematic_failure_stops_the_stream_with_a_reason(shards, monkeypatch):
    root, _ = shards
    monkeypatch.setattr("clipcore.shard_stream.MAX_FAILURES_IN_A_ROW", 20)
    stream = _stream(str(root), encoder="another-encoder", epoch_length=2)
    with pytest.warns(CorruptSampleWarning), pytest.raises(ShardError, match="20 samples in a row.*another-encoder.npy"):
        list(stream)
    assert stream.skipped == 20


@pytest.mark.parametrize("epoch_length", [None, 2])
def test_shards_that_are_not_tar_files_stop_the_stream_naming_the_problem(tmp_path, epoch_length):
    # One pass (validation) yielded nothing, so training ran without validation; resampled
    # (training) named no shard.
    for name in ("a.tar", "b.tar"):
        (tmp_path / name).write_bytes(bytes(range(256)) * 40)
    stream = _stream(str(tmp_path / "*.tar"), train=epoch_length is not None, epoch_length=epoch_length)
    with pytest.warns(CorruptSampleWarning), pytest.raises(ShardError) as caught:
        list(stream)
    assert re.search(rf"{tmp_path}/[ab]\.tar: invalid header$", str(caught.value)), str(caught.value)


def _shard_with_a_corrupt_run(path, good, corrupt):
    """A shard of ``good[0]``, ``corrupt`` samples in a row whose audio is garbage, then
    ``good[1:]`` (each sample a dict of member suffix -> bytes)."""
    garbage = {"flac": b"garbage" * 20, "json": good[0]["json"]}
    samples = [("good0", good[0]), *[(f"bad{i:04d}", garbage) for i in range(corrupt)],
               *[(f"good{i}", sample) for i, sample in enumerate(good[1:], start=1)]]
    with tarfile.open(path, "w") as tar:
        for key, sample in samples:
            for suffix, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_199_corrupt_samples_in_a_row_are_skipped_and_200_stop_the_stream(shards, tmp_path):
    _, paths = shards
    members = _members(paths[:1])
    good = [members[key] for key in sorted(members)[:3]]
    settings = dict(num_sources=1, batch_size=1, query_frames=1, train=False)
    tolerated = _stream(_shard_with_a_corrupt_run(tmp_path / "199.tar", good, 199), **settings)
    with pytest.warns(CorruptSampleWarning):
        batches = list(tolerated)
    assert [batch.keys for batch in batches] == [[["good0"]], [["good1"]], [["good2"]]]
    assert [batch.skipped for batch in batches] == [0, 199, 0] and tolerated.skipped == 199
    stopped = _stream(_shard_with_a_corrupt_run(tmp_path / "200.tar", good, 200), **settings)
    delivered = []
    with pytest.warns(CorruptSampleWarning), pytest.raises(ShardError, match=r"^200 samples in a row .*bad0199"):
        for batch in stopped:
            delivered.append(batch.keys)
    assert delivered == [[["good0"]]] and stopped.skipped == 200


def test_200_corrupt_samples_stop_training_with_one_sentence_from_a_loader_worker(shards, tmp_path):
    _, paths = shards
    members = _members(paths[:1])
    good = [members[key] for key in sorted(members)[:2]]
    data = ShardDataModule(train_shards=_shard_with_a_corrupt_run(tmp_path / "200.tar", good, 200), num_sources=1,
                           batch_size=1, num_workers=1, epoch_length=4, query_frames=1, segment_samples=SEGMENT,
                           shuffle_buffer=1, frame_size=48)
    with pytest.raises(ShardError) as caught:
        list(data.train_dataloader())
    assert str(caught.value).startswith("200 samples in a row could not be used; the last: bad0199 in ")
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_shard_specs(shards, tmp_path):
    root, paths = shards
    assert expand_shards(str(root)) == [str(p) for p in paths]
    assert expand_shards(f"{root}/toy-{{000000..000001}}.tar") == [str(p) for p in paths[:2]]
    assert expand_shards(f"{paths[0]}::{paths[2]}") == [str(paths[0]), str(paths[2])]
    piped = list(_stream(f"pipe:cat {paths[0]}", num_sources=1, query_frames=1, train=False))
    assert sum(len(b) for b in piped) == 4
    for bad in (str(tmp_path / "nothing-*.tar"), str(tmp_path / "missing.tar"), str(tmp_path)):
        with pytest.raises(ShardError, match=str(tmp_path)):
            expand_shards(bad)


def test_batch_moves_to_a_device():
    batch = MixBatch(torch.zeros(1, 4), torch.zeros(1, 1, 4), None, torch.zeros(1, 1, 1, 3, 2, 2, dtype=torch.uint8),
                     [["a"]], [["k"]])
    moved = batch.to(torch.device("meta"))
    assert moved.mixture.device.type == "meta" and moved.frames.dtype == torch.uint8 and moved.labels == [["a"]]
    assert batch.mixture.device.type == "cpu"


def test_training_on_several_devices_needs_an_epoch_length(shards):
    root, _ = shards
    settings = dict(train_shards=str(root), batch_size=2, num_workers=0, segment_samples=SEGMENT, query_frames=1,
                    shuffle_buffer=4, frame_size=48)
    one_pass = ShardDataModule(**settings)
    one_pass.trainer = SimpleNamespace(world_size=2)  # what the check reads from a DDP trainer
    with pytest.raises(ShardError, match=r"several devices needs data\.epoch_length"):
        one_pass.train_dataloader()
    one_pass.trainer = SimpleNamespace(world_size=1)
    assert sum(len(batch) for batch in one_pass.train_dataloader()) == 6  # 12 clips, 2 per mixture, read once
    resampled = ShardDataModule(epoch_length=3, **settings)
    resampled.trainer = SimpleNamespace(world_size=2)
    assert len(list(resampled.train_dataloader())) == 3


def _rank(rank: int, port: int, shard: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        data = ShardDataModule(train_shards=shard, batch_size=2, num_workers=1, epoch_length=3, query_frames=1,
                               segment_samples=SEGMENT, shuffle_buffer=4, frame_size=48)
        keys = [batch.keys for batch in data.train_dataloader()]
        done = torch.tensor([len(keys)])
        torch.distributed.all_reduce(done)  # both ranks must reach this point
        results.put((rank, len(keys), int(done), keys))
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_on_one_shard_both_finish_a_resampled_epoch(shards):
    _, paths = shards
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(r, port, str(paths[0]), results)) for r in range(2)]
    for process in ranks:
        process.start()
    outcome = sorted(results.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert [(rank, count, total) for rank, count, total, _ in outcome] == [(0, 3, 6), (1, 3, 6)]
    assert outcome[0][3] != outcome[1][3]  # each rank draws its own mixtures


def test_lightning_trainer_gets_mix_batches_for_two_epochs(shards, tmp_path):
    from lightning.pytorch import LightningModule, Trainer

    root, paths = shards

    class Probe(LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = {"train": [], "val": []}

        def training_step(self, batch, index):
            assert isinstance(batch, MixBatch)
            self.seen["train"].append((self.current_epoch, batch.keys))
            return (self.weight * batch.mixture).pow(2).mean()

        def validation_step(self, batch, index):
            self.seen["val"].append(batch.keys)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = ShardDataModule(train_shards=str(root), val_shards=str(paths[0]), batch_size=2, num_workers=0,
                           epoch_length=3, segment_samples=SEGMENT, query_frames=1, shuffle_buffer=8, frame_size=48)
    model = Probe()
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    epochs = [[keys for epoch, keys in model.seen["train"] if epoch == e] for e in (0, 1)]
    assert [len(e) for e in epochs] == [3, 3] and epochs[0] != epochs[1]
    first, second = model.seen["val"]  # one batch of two mixtures per epoch, the same each epoch
    assert first == second and sorted(k for pair in first for k in pair) == sorted(_members(paths[:1]))


def test_validation_mixes_clips_of_different_labels_even_from_class_sorted_shards(tmp_path):
    """Shards are often written class by class (a folder per class); validation, which
    reads them in order, must still mix clips of different labels: the stream looks ahead
    (MIX_POOL clips) for a partner of another label. Every clip is used once, and
    the order is deterministic."""
    clips = sorted(synthetic.toy_clips(24, seed=3, duration=CLIP_SECONDS, frame_size=48), key=lambda c: c.label)
    paths = synthetic.write_shards(clips, tmp_path, shard_size=8, encoder=IndexEncoder())
    labels = [c.label for c in clips]
    assert len(set(labels)) >= 3 and sum(a == b for a, b in zip(labels[::2], labels[1::2])) >= 6  # in order: same-label pairs

    def pairs():
        stream = _stream([str(p) for p in paths], num_sources=2, batch_size=4, train=False, encoder="index-encoder")
        return [(tuple(labels), tuple(keys)) for batch in stream for labels, keys in zip(batch.labels, batch.keys)]

    got = pairs()
    assert got == pairs()
    assert all(a != b for (a, b), _ in got)
    keys = [key for _, pair in got for key in pair]
    assert len(keys) == len(set(keys)) == len(clips)  # every clip once


class LabelEncoder:
    """Stand-in image encoder that embeds every frame of the i-th clip written as the
    one-hot vector of that clip's label: clips of one label share a query exactly."""

    name = "label-encoder"

    def __init__(self, labels: list[str]) -> None:
        self.codes = [sorted(set(labels)).index(label) for label in labels]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.eye(8)[self.codes.pop(0)].expand(len(images), 8)


def test_training_with_distinct_queries_mixes_clips_whose_queries_differ(tmp_path):
    """Shuffled training from class-sorted shards often mixes two clips of one label;
    with ``distinct_queries`` the stream looks ahead for a partner whose query embedding
    is far enough, so no mixture holds two equal queries. Without an encoder there are no
    embeddings to compare, and a threshold outside a cosine's range is a slip (97 for
    0.97): each is one clear error."""
    clips = sorted(synthetic.toy_clips(24, seed=3, duration=CLIP_SECONDS, frame_size=48), key=lambda c: c.label)
    paths = synthetic.write_shards(clips, tmp_path, shard_size=8, encoder=LabelEncoder([c.label for c in clips]))

    def pairs(**kwargs) -> list[tuple[str, ...]]:
        stream = _stream([str(p) for p in paths], num_sources=2, batch_size=4, train=True, epoch_length=12,
                         encoder="label-encoder", **kwargs)
        return [tuple(labels) for batch in stream for labels in batch.labels]

    assert sum(a == b for a, b in pairs()) >= 4  # as they come: some mixtures of one label
    distinct = pairs(distinct_queries=0.5)
    assert len(distinct) == 48 and all(a != b for a, b in distinct)
    with pytest.raises(ValueError, match="distinct_queries compares query embeddings"):
        _stream([str(p) for p in paths], distinct_queries=0.5)
    with pytest.raises(ValueError, match="distinct_queries is a cosine, from -1 to 1, not 97"):
        _stream([str(p) for p in paths], encoder="label-encoder", distinct_queries=97)


def test_videos_that_would_share_a_key_get_distinct_key_parts():
    videos = [("x/good", "c/x/good.mp4"), ("x_good", "c/x_good.mp4"), ("clip", "a/clip.mp4"), ("clip", "b/clip.mp4"),
              ("v1.2", "c/v1.2.mp4"), ("v1.2", "c/v1.2.mp4")]
    keys = distinct_key_ids(videos)
    assert len(keys) == 5 and len(set(keys.values())) == 5
    assert keys["v1.2", "c/v1.2.mp4"] == "v1_2"  # alone: the id made safe, as before
    for (video_id, _), key in keys.items():
        if video_id != "v1.2":
            assert re.fullmatch(rf"{video_id.replace('/', '_')}-[0-9a-f]{{8}}", key)
    assert distinct_key_ids(reversed(videos)) == keys  # the order of the inputs does not matter
