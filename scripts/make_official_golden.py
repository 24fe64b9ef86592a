#!/usr/bin/env python
"""Records the official PyTorch Gated-SCNN's outputs on deterministic random weights (golden file).

Not run in CI: it needs PyTorch (CPU is enough) and a local copy of the official code
(https://github.com/nv-tlabs/GSCNN; only its
``*.py`` files are used, the code is CC BY-NC-SA 4.0 and is never copied into this project).
CI's ``tests/test_official_checkpoint.py`` regenerates the same weights with NumPy, converts
them with ``gscnn_tf.checkpoint_import.official_pytorch`` and compares the Keras model's outputs with
the ones recorded here. Usage (a venv with torch, numpy, opencv-python-headless, six, pyyaml)::

    python scripts/make_official_golden.py --official-code /path/to/GSCNN \\
        [--out tests/golden/official_golden.npz] [--seed 0] [--sizes 64x128 75x131]

What it does:

1. imports the official ``network.gscnn.GSCNN`` with three shims that change nothing in the
   forward pass: ``Tensor.cuda`` is the identity (CPU run), ``torchvision`` (imported but
   unused by the network) is stubbed, and plain ``torch.nn.BatchNorm2d`` is used (the
   official default when the config is not finalised; same inference as its SyncBN);
2. loads ``random_official_state_dict(seed)`` strictly (``load_state_dict(strict=True)``
   through ``torch.nn.DataParallel``, so the keys carry ``module.`` as in the release);
3. for each size, builds a uint8 RGB test image with flat regions and shapes (so that the
   official Canny, on the wrapped uint8 cast, finds contours), normalises it as the
   official loader does (ToTensor then ImageNet mean/std) and records the official
   ``seg_out`` logits, ``edge_out`` and the Canny map the official forward computes.

Output (``np.savez_compressed``): per size ``HxW``: ``image_HxW`` (H, W, 3) uint8,
``seg_HxW`` (H, W, C) float32, ``edge_HxW`` (H, W) float32, ``canny_HxW`` (H, W) uint8
(0/255); plus ``meta`` (a JSON string: seed, sizes, torch/numpy/cv2 versions).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load_layout():
    """gscnn_tf.checkpoint_import.official_layout by file path (its package needs no TensorFlow)."""
    path = os.path.join(REPO, "gscnn_tf", "convert", "official_layout.py")
    spec = importlib.util.spec_from_file_location("official_layout", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image(height, width, seed):
    """uint8 RGB (H, W, 3): a few flat-coloured rectangles and discs on a gradient, plus noise."""
    import numpy as np

    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([40 + 180 * xx / width, 200 - 150 * yy / height, 90 + 0 * xx], axis=-1)
    for _ in range(6):
        colour = rng.uniform(0, 255, 3)
        if rng.rand() < 0.5:
            y0, x0 = rng.randint(0, height - 8), rng.randint(0, width - 8)
            img[y0:y0 + rng.randint(6, height // 2), x0:x0 + rng.randint(6, width // 2)] = colour
        else:
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, height / 3)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _import_official(code_dir):
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the forward moves Canny to CUDA
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        tv.transforms.functional.pad = lambda *a, **k: None  # imported, never called by the network
        sys.modules.update({
            "torchvision": tv, "torchvision.transforms": tv.transforms,
            "torchvision.transforms.functional": tv.transforms.functional,
        })
    sys.path.insert(0, os.path.abspath(code_dir))
    from network.gscnn import GSCNN  # noqa: E402  (official code)

    return GSCNN


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-code", required=True, help="directory of the official GSCNN code (holds network/)")
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "golden", "official_golden.npz"),
                        help="golden file to write (default tests/golden/official_golden.npz)")
    parser.add_argument("--seed", type=int, default=0, help="RandomState seed of the weights (images use seed+1+i)")
    parser.add_argument("--num-classes", type=int, default=19, help="classes of the network (default 19)")
    parser.add_argument("--sizes", nargs="+", default=["64x128", "75x131"], help="input sizes HxW")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.official_code, "network", "gscnn.py")):
        print(f"error: {args.official_code}: no network/gscnn.py (pass the official code's root)", file=sys.stderr)
        return 2

    import cv2
    import numpy as np
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    layout = _load_layout()
    GSCNN = _import_official(args.official_code)
    net = torch.nn.DataParallel(GSCNN(num_classes=args.num_classes))
    state = {f"module.{k}": torch.from_numpy(np.ascontiguousarray(v))
             for k, v in layout.random_official_state_dict(args.seed, args.num_classes).items()}
    net.load_state_dict(state, strict=True)
    net.eval()

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    arrays = {}
    for i, size in enumerate(args.sizes):
        h, w = (int(v) for v in size.lower().split("x"))
        image = test_image(h, w, args.seed + 1 + i)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0)  # ToTensor
        x = (x - mean) / std  # Normalize
        start = time.time()
        with torch.no_grad():
            seg, edge = net(x)
        # The Canny map the official forward computes internally (same expression).
        canny = cv2.Canny(x.numpy().transpose(0, 2, 3, 1).astype(np.uint8)[0], 10, 100)
        print(f"{size}: forward {time.time() - start:.1f} s, seg |max| {seg.abs().max():.3g}, "
              f"edge mean {edge.mean():.3f}, canny pixels {(canny > 0).sum()}")
        arrays[f"image_{size}"] = image
        arrays[f"seg_{size}"] = seg[0].permute(1, 2, 0).numpy().astype(np.float32)
        arrays[f"edge_{size}"] = edge[0, 0].numpy().astype(np.float32)
        arrays[f"canny_{size}"] = canny.astype(np.uint8)
    meta = {
        "seed": args.seed, "num_classes": args.num_classes, "sizes": args.sizes,
        "torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
