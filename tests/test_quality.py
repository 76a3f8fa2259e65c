"""The quality benchmark's quick mode, end to end on a tiny target (benchmarks/quality.py)."""
import glob
import json
import os
import subprocess
import sys

import pytest

import quality  # benchmarks/quality.py, on the path by conftest
from conftest import REPO


def test_quick_mode_trains_the_rows_from_pretrained_weights_and_writes_its_json(data_root,
                                                                                tmp_path):
    out, store = tmp_path / "quick.json", tmp_path / "runs.json"
    command = [sys.executable, os.path.join(REPO, "benchmarks", "quality.py"), "--config",
               os.path.join(REPO, "tests", "configs", "tiny-quality.yml"), "--rows", "itc",
               "full", "oracle", "--seeds", "0", "--data-seed", "5", "--json", str(out),
               "--data-root", data_root, "--results", str(store)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Every finished run is kept; run again, the command trains nothing and prints the same.
    assert len(json.loads(store.read_text())) == 4  # three rows and the zero-shot reference
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert "4 of 4 runs already in" in again.stderr
    assert again.stdout.split("whole benchmark")[0] == proc.stdout.split("whole benchmark")[0]
    result = json.loads(out.read_text())
    assert set(result) == {"itc", "full", "oracle", "ceiling_R1", "zero_shot"}
    for row in ("itc", "full", "oracle"):
        assert set(result[row]) == {"R1", "mAP", "ari_first", "ari_last", "ari_first_text",
                                    "ari_last_text"}
        assert 0 <= result[row]["R1"] <= 100 and 0 <= result[row]["mAP"] <= 100
    # Only full CPCL clusters: ITC trains without labels, the oracle reads the identities.
    assert result["itc"]["ari_first"] is None and result["oracle"]["ari_last_text"] is None
    for key in ("ari_first", "ari_last", "ari_first_text", "ari_last_text"):
        assert isinstance(result["full"][key], float)
    # The pretrained model's scores, and what a perfect reader of the preset world's captions gets
    assert set(result["zero_shot"]) == {"R1", "mAP"} and 0 <= result["zero_shot"]["R1"] <= 100
    assert 0 < result["ceiling_R1"] <= 100
    # The target came from data seed 5; the rows started from the pretraining config's weights.
    specs = [json.load(open(p)) for p in glob.glob(os.path.join(data_root, "SyntheticPedes",
                                                                "*", "spec.json"))]
    assert any(s["seed"] == 5 and s.get("preset") == "cuhk" for s in specs)
    assert glob.glob(os.path.join(data_root, "pretrained", "CPCL-Tiny-tiny-pretrain-*.pth"))
    assert "| ITC only (instance level, baseline) |" in proc.stdout
    assert "caption ceiling: a perfect reader's test R1" in proc.stdout
    assert "Loss terms in the last epoch" in proc.stdout
    # The pretraining run's log goes to stderr: stdout holds only the results (make bench pastes it).
    assert "fastreid.utils.events" not in proc.stdout and "Saving checkpoint" not in proc.stdout


def test_an_unreadable_results_file_is_named_before_any_training(tmp_path):
    bad = tmp_path / "runs.json"
    bad.write_text("{not json")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "quality.py"),
                           "--rows", "itc", "--results", str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"--results {bad} cannot be read as a results file" in proc.stderr


def test_the_ablation_by_default_leaves_the_diagnosis_rows_to_be_asked_for():
    assert quality.MAIN_ROWS == ["zeroshot", "itc", "pmm", "hcm", "full", "full_shuffled",
                                 "full_tuned", "true_cpcl", "oracle"]
    assert not set(quality.MAIN_ROWS) & set(quality.DIAGNOSIS)
    assert set(quality.DIAGNOSIS) <= set(quality.ROWS)


def _criteria(r1_by_row):
    """validity() on three training seeds of data seed 0 with a cuhk-like target's statistics."""
    results = {(row, 0, s): {"Rank-1": r1} for row, r1s in r1_by_row.items()
               for s, r1 in enumerate(r1s)}
    stats = dict(caption_ceiling_R1=83.0, chance_R1=1.1, preset="cuhk", captions_per_image=2.0,
                 words_per_caption=24.4, gender_named=0.99, no_shared_attribute=0.0,
                 invisible_named=0.0)
    return {c[0][:4]: c for c in quality.validity(results, [0, 1, 2], 0, stats, [])}


def test_validity_criteria_judge_the_identity_gain_against_its_own_batches():
    criteria = _criteria({"zeroshot": [9.7] * 3, "itc": [56.0, 57.5, 55.0],
                          "oracle": [54.5, 55.0, 56.0], "itc_pk": [46.0, 47.0, 45.5],
                          "oracle_pk": [50.0, 51.5, 50.5]})
    assert criteria["(a) "][2] and criteria["(b) "][2]
    assert not criteria["(c) "][2]  # shuffled batches: no gain over ITC
    # P x K batches: +4.5 R1 = 8.4% of 53.8, far above the seeds' spread.
    assert criteria["(c')"][2] and "+4.50 R1 = 8.4%" in criteria["(c')"][1]
    assert "(d) " not in criteria  # no itc_id row, no (d)
    # A gain inside the range but within the seeds' noise does not hold.
    noisy = _criteria({"itc_pk": [40.0, 46.0, 52.0], "oracle_pk": [44.0, 50.0, 57.0]})
    assert not noisy["(c')"][2] and "(a) " not in noisy


def test_the_verdict_weighs_both_full_cpcl_rows_against_itc_in_pooled_stds():
    def runs(row, maps):
        return {(row, 2, s): {"mAP": m} for s, m in enumerate(maps)}
    results = {**runs("itc", [55.0, 56.0, 57.0]), **runs("full", [50.0, 51.0, 52.0]),
               **runs("full_shuffled", [59.0, 60.0, 61.0]), **runs("oracle", [58.0, 59.0, 60.0]),
               **runs("itc_pk", [45.0, 46.0, 47.0]), **runs("oracle_pk", [52.0, 53.0, 54.0])}
    paper, departure = quality.gap_verdict(results, [0, 1, 2], 2).split("\n\n")
    assert paper.startswith("+ OPLM (full CPCL) − ITC on mAP: -5.00 points")
    assert "-5.0 pooled stds" in paper and "closes -167% of that gap" in paper
    # In P x K batches true identities add 7 mAP over ITC; the pseudo labels 5 of them.
    assert "true identities add +7.00 mAP over ITC; the pseudo labels add +5.00" in paper
    assert "full CPCL in shuffled batches" in departure and "+4.00 points" in departure
    assert "4.0 pooled stds" in departure and "closes 133% of that gap" in departure
    # No supervised gain over ITC: nothing to close, said so instead of a negative share.
    results.update(runs("oracle", [54.0, 55.0, 56.0]))
    assert "there is no gap to close" in quality.gap_verdict(results, [0, 1, 2], 2)
    # Rows missing from a data seed: no verdict.
    assert quality.gap_verdict(results, [0, 1, 2], 3) == ""


def test_make_bench_shares_its_quality_runs_with_the_ablation_only_for_a_clean_commit(
        monkeypatch):
    import run_all  # benchmarks/run_all.py
    sections = {b[0]: b[2] for b in run_all.BENCHMARKS}
    monkeypatch.setattr(run_all, "_commit", lambda: "abc1234")
    for name in ("quality", "ablation"):
        args = run_all.with_runs_file(sections[name])
        assert args[args.index("--results") + 1] == "logs/bench/quality-runs-abc1234.json"
    # Uncommitted changes: runs are not kept (they could differ from the commit's).
    monkeypatch.setattr(run_all, "_commit", lambda: "abc1234+changes")
    assert "--results" not in run_all.with_runs_file(sections["ablation"])
    assert "RUNS" not in run_all.with_runs_file(sections["ablation"])
    # The long sections are asked for; `make bench` asks the question in brief.
    assert {"ablation", "diagnosis", "scale", "clustering"} <= set(run_all.ON_REQUEST)
    assert "quality" not in run_all.ON_REQUEST


def test_the_settings_sweep_scores_each_clustering_setting_against_the_identities(data_root,
                                                                                   tmp_path):
    out = tmp_path / "settings.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "pseudo_label_settings.py"), "--config",
         os.path.join(REPO, "tests", "configs", "tiny-quality.yml"), "--data-seeds", "5",
         "--eps", "0.2", "0.7", "--min-samples", "2", "--k1", "5", "--k2", "2",
         "--oplm-threshold", "-1", "--data-root", data_root, "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["data_seed"], r["model"], r["eps"]) for r in rows] == [(5, "pretrained", 0.2),
                                                                     (5, "pretrained", 0.7)]
    for r in rows:
        for modality in ("image", "text"):
            q = r[modality]
            assert 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1 and -1 <= q["ari"] <= 1
    # Without OPLM, DBSCAN at a smaller radius keeps at least as many outliers (each core point
    # and each neighbourhood of the larger radius contains the smaller one's).
    for modality in ("image", "text"):
        assert rows[0][modality]["outlier_share"] >= rows[1][modality]["outlier_share"]
    assert "eps 0.20 min_samples 2 k1  5 k2 2: image P" in proc.stdout
    assert "nearest 5 rows of the same person: images" in proc.stdout
    assert 0 <= rows[0]["neighbour_agreement"]["image"] <= 1


def test_chance_is_the_share_of_the_gallery_a_caption_searches():
    from types import SimpleNamespace
    # people 1 (3 images), 2 (1), 3 (2), 4 (2); one caption per image
    records = [SimpleNamespace(pid=p, captions=["c"]) for p in (1, 1, 1, 2, 3, 3, 4, 4)]
    assert quality.chance_r1(records) == pytest.approx(100 * (3 * 3 + 1 + 2 * 2 + 2 * 2) / 8 / 8)
    # galleries {1, 2} (4 images) and {3, 4} (4 images)
    assert quality.chance_r1(records, 2) == pytest.approx(100 * (3 * 3 + 1 + 2 * 2 + 2 * 2) / 8 / 4)
