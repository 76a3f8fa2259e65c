"""The quality benchmark's quick mode, end to end on a tiny target (benchmarks/quality.py)."""
import glob
import json
import os
import subprocess
import sys

import quality  # benchmarks/quality.py, on the path by conftest
from conftest import REPO


def test_quick_mode_trains_the_rows_from_pretrained_weights_and_writes_its_json(data_root,
                                                                                tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "quality.py"), "--config",
         os.path.join(REPO, "tests", "configs", "tiny-quality.yml"), "--rows", "itc", "full",
         "oracle", "--seeds", "0", "--data-seed", "5", "--json", str(out), "--data-root",
         data_root], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
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


def test_the_ablation_by_default_leaves_the_diagnosis_rows_to_be_asked_for():
    assert quality.MAIN_ROWS == ["zeroshot", "itc", "pmm", "hcm", "full", "true_cpcl", "oracle"]
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
