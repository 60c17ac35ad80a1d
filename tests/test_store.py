"""The store (rlhf_lab/run/store.py): the cache seen by the ranks of a run, and the in-progress index."""

from __future__ import annotations

from rlhf_lab.distributed import Ranks
from rlhf_lab.run.store import Artifact, Store, file_digests


class Channel(Ranks):
    """Ranks whose decisions go through a dict: rank 0 tells, a worker hears what was told."""

    def __init__(self, rank: int, board: dict) -> None:
        super().__init__(rank, world=2)
        self.board = board

    def tell(self, name, value):
        self.board[name] = value

    def hear(self, name):
        return self.board[name]


def test_rank_zero_builds_once_and_tells_the_workers_where(tmp_path):
    board, built = {}, []

    def build(out):
        built.append(out)
        if out is not None:
            (out / "weights").write_text("w")
        return {"sft/loss": 1.5}

    main = Store(tmp_path, Channel(0, board))
    first = main.cached("sft", "k1", build, collective=True)
    assert isinstance(first, Artifact) and first.metrics == {"sft/loss": 1.5} and (first.path / "weights").read_text() == "w"
    assert board == {"start:sft:k1": "build", "done:sft:k1": str(first.path)}
    # A worker joins a collective build (with no output directory) and then reads what rank 0 published.
    worker = Store(tmp_path, Channel(1, board)).cached("sft", "k1", build, collective=True)
    assert built[1] is None and (worker.path, worker.metrics) == (first.path, first.metrics)
    # Found in the cache: nobody builds, the workers are told so.
    again = main.cached("sft", "k1", build, collective=True)
    assert len(built) == 2 and again.path == first.path and board["start:sft:k1"] == "reused"
    # A build that does not train is rank 0's alone.
    board["start:prefs:k2"], board["done:prefs:k2"] = "build", str(first.path)
    Store(tmp_path, Channel(1, board)).cached("prefs", "k2", build)
    assert len(built) == 2


def test_a_checkpoint_is_the_resume_point_until_the_artifact_is_published(tmp_path):
    store = Store(tmp_path, Ranks.single())
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_text("state")
    assert store.resume_point("policy", "policy", "k") is None
    store.record_checkpoint("policy", "k", checkpoint)
    assert store.resume_point("policy", "policy", "k") == checkpoint.resolve()
    store.cached("policy", "k", lambda out: {})
    assert store.resume_point("policy", "policy", "k") is None


def test_file_digests_hash_the_files_a_config_names(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("a\n")
    digests = file_digests({"path": str(data), "db": str(data), "lr": 0.1, "missing": str(tmp_path / "none")}, skip=("db",))
    assert list(digests) == ["path"]
    data.write_text("b\n")
    assert file_digests({"path": str(data)}) != digests
