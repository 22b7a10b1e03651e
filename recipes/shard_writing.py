"""The output folder of ``recipes/prepare_shards.py``: its plan, the shards assembled as
clips come in, the skips of each written shard, and the run's summary.

A folder holds ``plan.json`` (the inputs and settings its shards come from: a rerun with
others is refused, the same resumes), the shards, ``shard_skips.json`` (the clips of each
written shard that were skipped, so that a resumed run lists them too), ``skipped.tsv``
(every file or clip skipped, with the reason) and, after unforeseen errors, ``errors.log``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from clipcore.errors import UsageError
from clipcore.files import atomic_write

if TYPE_CHECKING:
    from recipes.prepare_shards import ClipJob, EncodedSample

__all__ = ["ShardSkips", "ShardAssembler", "check_plan", "summarize_run"]


class ShardSkips:
    """The clips of each written shard that were skipped, kept beside the shards in
    ``shard_skips.json`` (rewritten atomically as each shard is written), so that a resumed
    run lists the complete shards' skips with its own, even after an interruption."""

    def __init__(self, out: Path) -> None:
        self.path = out / "shard_skips.json"
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            record = {}
        self.by_shard: dict[str, list[tuple[str, str]]] = {
            name: [(str(a), str(b)) for a, b in lines] for name, lines in (record.items() if isinstance(record, dict) else ())
            if (out / name).is_file() and isinstance(lines, list) and all(isinstance(x, list) and len(x) == 2 for x in lines)
        }

    def add(self, shard: str, lines: list[tuple[str, str]]) -> None:
        """Record the skips of ``shard`` (a path), just written."""
        self.by_shard[Path(shard).name] = sorted(set(lines))
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(self.by_shard, indent=1) + "\n"))

    def lines(self) -> list[tuple[str, str]]:
        """Every recorded skip, ``(file, reason)``."""
        return [line for lines in self.by_shard.values() for line in lines]


class ShardAssembler:
    """Collects clips as workers finish them, and writes each shard once all its clips are in.

    A shard holds its clips in planned order; one none of whose clips could be read is not
    written, so that a rerun tries it again.
    """

    def __init__(self, shards: list[tuple[str, list[ClipJob]]]) -> None:
        self.shards = shards
        self.slots: dict[int, list[EncodedSample | None]] = {n: [None] * len(jobs) for n, (_, jobs) in enumerate(shards)}
        self.remaining = {n: len(jobs) for n, (_, jobs) in enumerate(shards)}
        self.written = 0

    def add(self, shard: int, position: int, sample: EncodedSample | None) -> None:
        """Record one clip's result (None: skipped) and write the shard when it is complete."""
        self.slots[shard][position] = sample
        self.remaining[shard] -= 1
        if self.remaining[shard] == 0:
            from clipcore.shards import write_shard

            samples = [s for s in self.slots.pop(shard) if s is not None]
            if samples:
                write_shard(self.shards[shard][0], samples)
                self.written += len(samples)


def check_plan(out: Path, record: dict) -> None:
    """Write ``out/plan.json`` (``record``: the inputs and settings of the run), or check
    that the one there is the same, so that the run resumes the folder's shards.

    Raises:
        UsageError: the folder holds shards of other inputs or settings.
    """
    plan_file = out / "plan.json"
    if plan_file.exists():
        try:
            previous = json.loads(plan_file.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != record:
            raise UsageError(
                f"{out}: holds shards prepared from other inputs or settings (see {plan_file}); "
                "use a new folder, or delete it to start over."
            )
        return
    atomic_write(plan_file, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def summarize_run(out: Path, written: int, shards: int, resumed: int, skipped: list[tuple[str, str]],
                  tracebacks: list[str]) -> None:
    """Print what the run wrote and skipped (the first ten reasons); write ``skipped.tsv``
    (``file<TAB>reason`` per line) and the unforeseen errors' ``errors.log``.

    Args:
        out: the output folder.
        written: clips written by this run; shards: shards written; resumed: complete shards kept.
        skipped: ``(file, reason)`` per file or clip skipped (the kept shards' included).
        tracebacks: of the unforeseen errors.
    """
    if tracebacks:
        atomic_write(out / "errors.log", lambda tmp: tmp.write_text("\n".join(tracebacks)))
        print(f"{len(tracebacks)} clips failed unexpectedly: tracebacks in {out / 'errors.log'}")
    lines = sorted(set(skipped))  # one per file, or per clip where clips of a file failed apart
    print(f"wrote {written} clips in {shards} shards to {out}" + (f" ({resumed} complete shards kept)" if resumed else ""))
    if lines:
        atomic_write(out / "skipped.tsv", lambda tmp: tmp.write_text("".join(f"{p}\t{r}\n" for p, r in lines)))
        print(f"skipped {len({p for p, _ in lines})} files or clips of them (all listed in {out / 'skipped.tsv'}):")
        for _, reason in lines[:10]:
            print(f"  {reason}")
