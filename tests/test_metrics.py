"""metrics.jsonl keeps one record per step across crashes: a restart rewinds it to the step it
starts from, keeping the lost attempt's records in metrics.lost.jsonl."""

from __future__ import annotations

from cats_ds.metrics import LOST_NAME, MetricsWriter, read_metrics


def write_attempt(run_dir, start: int, last: int) -> None:
    writer = MetricsWriter(run_dir, True, start_step=start)
    writer.write("run", start, {"resumed_from": start or None})
    for step in range(start + 1, last + 1):
        writer.write("train", step, {"loss": 1.0 / step, "attempt": start})
        if step % 4 == 0:
            writer.write("eval", step, {"dev_loss": 2.0 / step})
    writer.close()


def test_a_restart_rewinds_the_records_of_the_lost_attempt(tmp_path):
    write_attempt(tmp_path, 0, 6)       # crashed after step 6; the last checkpoint is step 4
    write_attempt(tmp_path, 4, 8)
    train = read_metrics(tmp_path / "metrics.jsonl", "train")
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["attempt"] for r in train] == [0, 0, 0, 0, 4, 4, 4, 4]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", "eval")] == [4, 8]
    lost = read_metrics(tmp_path / LOST_NAME)
    assert [(r["kind"], r["step"], r["rewound_to"]) for r in lost] == [("train", 5, 4), ("train", 6, 4)]


def test_a_restart_from_scratch_sets_every_earlier_step_aside(tmp_path):
    write_attempt(tmp_path, 0, 3)       # crashed before the first checkpoint
    write_attempt(tmp_path, 0, 2)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", "train")] == [1, 2]
    assert [r["step"] for r in read_metrics(tmp_path / LOST_NAME, "train")] == [1, 2, 3]
    assert len(read_metrics(tmp_path / "metrics.jsonl", "run")) == 2     # every start is recorded


def test_a_clean_resume_loses_nothing(tmp_path):
    write_attempt(tmp_path, 0, 4)       # stopped by a signal at step 4, checkpoint of step 4
    before = (tmp_path / "metrics.jsonl").read_text()
    write_attempt(tmp_path, 4, 6)
    assert (tmp_path / "metrics.jsonl").read_text().startswith(before)
    assert not (tmp_path / LOST_NAME).exists()


def test_a_record_cut_short_by_a_crash_is_kept_aside_not_fatal(tmp_path):
    write_attempt(tmp_path, 0, 3)
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"kind": "train", "step": 4, "lo')       # the disk filled, or the process died, mid-line
    write_attempt(tmp_path, 2, 4)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", "train")] == [1, 2, 3, 4]
    lost = read_metrics(tmp_path / LOST_NAME)
    assert lost[-1] == {"kind": "torn", "text": '{"kind": "train", "step": 4, "lo', "rewound_to": 2}
