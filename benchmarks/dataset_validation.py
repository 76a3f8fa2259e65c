"""Dataset validation benchmark: loading and checking a CUHK-PEDES-sized annotation file.

    python benchmarks/dataset_validation.py               # 40,206 images (CUHK-PEDES), 80k captions
    python benchmarks/dataset_validation.py --images 5000

Writes a CUHK-PEDES-format root in a temporary folder (empty image files in four sub-folders,
as the real imgs/ has), then times, side by side in this process: the project's whole load
(JSON, every entry checked, every image's existence checked with one listing per folder) and,
the existence check alone, and as the reference the same check done the obvious way (one
os.path.isfile per image). The OS file cache is warm for both (the files were just written).
Prints a Markdown table.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_root(root, num_images):
    folder = os.path.join(root, "CUHK-PEDES")
    subfolders = ("CUHK01", "CUHK03", "Market", "train_query")
    entries = []
    for i in range(num_images):
        path = f"{subfolders[i % 4]}/{i:07d}.jpg"
        entries.append({"id": 1 + i // 3, "split": "train", "file_path": path,
                        "captions": [f"a person number {i} wearing a red coat and black shoes",
                                     "the man carries a bag on his left shoulder"]})
    for sub in subfolders:
        os.makedirs(os.path.join(folder, "imgs", sub))
    for e in entries:
        open(os.path.join(folder, "imgs", e["file_path"]), "wb").close()
    with open(os.path.join(folder, "reid_raw.json"), "w") as f:
        json.dump(entries, f)
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=40206)
    args = parser.parse_args()
    import cpcl_plugin  # noqa: F401
    from cpcl_plugin.data import CUHKPEDES
    from cpcl_plugin.data.datasets import _missing_files
    with tempfile.TemporaryDirectory() as root:
        folder = write_root(root, args.images)
        start = time.perf_counter()
        data = CUHKPEDES(root=root)
        project = time.perf_counter() - start
        assert len(data.split("train")) == args.images
        paths = [r.image_path for r in data.split("train")]
        start = time.perf_counter()
        assert not _missing_files(paths)
        listing = time.perf_counter() - start
        start = time.perf_counter()
        assert all(os.path.isfile(p) for p in paths), folder
        reference = time.perf_counter() - start
    print("| images | whole load + validation (s) | existence check: one listing per folder (s) "
          "| reference: os.path.isfile per image (s) |")
    print("|---|---|---|---|")
    print(f"| {args.images:,} | {project:.2f} | {listing:.2f} | {reference:.2f} |")


if __name__ == "__main__":
    main()
