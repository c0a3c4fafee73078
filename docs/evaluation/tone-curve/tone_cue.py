"""How much the tone alone says about the class in ../shared/data/cxr224.

Run from the repository root with the project's Python (it has numpy and
Pillow): ~/.cache/cxr-led/torch-venv/bin/python docs/evaluation/tone-curve/tone_cue.py
Prints each class's 1st, 50th and 99th percentiles and the accuracy of a
nearest-class-mean rule on seven quantiles of each image (trained on a random
half of the 5000 images, scored on the other half): what a classifier can
learn from the tone curve without looking at any anatomy.
"""
import glob

import numpy as np
from PIL import Image

QUANTILES = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]


def load(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0


features = {}
for name in ["covid", "normal"]:
    files = sorted(glob.glob(f"../shared/data/cxr224/{name}/*.png"))
    features[name] = np.array([np.quantile(load(f), QUANTILES) for f in files])
    mean, spread = features[name].mean(0), features[name].std(0)
    print(f"{name}: {len(files)} images, percentiles 1/50/99 mean {np.round(mean[[0, 3, 6]], 3)} sd {np.round(spread[[0, 3, 6]], 3)}")
x = np.vstack([features["covid"], features["normal"]])
y = np.r_[np.zeros(len(features["covid"])), np.ones(len(features["normal"]))]
order = np.random.default_rng(0).permutation(len(y))
train, test = order[: len(y) // 2], order[len(y) // 2 :]
means = [x[train][y[train] == k].mean(0) for k in (0, 1)]
scale = x[train].std(0)
predicted = np.argmin([(((x[test] - m) / scale) ** 2).sum(1) for m in means], axis=0)
print(f"nearest class mean on {len(QUANTILES)} tone quantiles, held-out half: {100 * (predicted == y[test]).mean():.1f} %")
