#!/usr/bin/env python
"""Minimal TF Serving REST client for a Gated-SCNN export (stdlib + numpy + opencv only).

Sends one image to ``POST {server}/v1/models/{model}[/versions/{v}]:predict`` as
``{"signature_name": "serving_default", "instances": [{"b64": "<base64 image file>"}]}``
and writes the predicted class map as a PNG in the dataset's class colours, read from the
export's ``assets/labels.json`` (``--labels``; Cityscapes' without it), and optionally the edge
map. Example::

    python scripts/serving_client.py --server http://localhost:8501 --model gscnn \\
        --image street.png --output street_seg.png --edges street_edges.png

Exit status: 0 on success, 1 when the server cannot be reached or answers with an error,
2 for local problems (unreadable image, bad arguments).
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

import numpy as np

# Cityscapes train-id colours (RGB), as in cityscapesscripts.helpers.labels; ids >= 19 are black.
CITYSCAPES_COLORS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


class ClientError(RuntimeError):
    """The server could not be reached or answered with an error."""


def build_request(image_bytes: bytes, signature: str = "serving_default") -> dict:
    """The REST body: one instance, the encoded image as a base64 binary value."""
    return {"signature_name": signature, "instances": [{"b64": base64.b64encode(image_bytes).decode("ascii")}]}


def predict_url(server: str, model: str, version=None) -> str:
    base = server.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "") + ":predict"
    return base + path


def post_json(url: str, body: dict, timeout: float = 60.0) -> dict:
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise ClientError(f"{url}: HTTP {exc.code}: {' '.join(str(detail).split())[:500]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"{url}: cannot reach the server ({getattr(exc, 'reason', exc)})") from None
    except ValueError as exc:
        raise ClientError(f"{url}: response is not JSON ({exc})") from None


def parse_response(response: dict) -> tuple:
    """First prediction -> (classes (H, W) int, edge (H, W) float32 or None), cropped to its size.

    Anything that is not a well-formed prediction (wrong types, ragged or non-numeric arrays,
    sizes that do not fit) raises :class:`ClientError` with a one-line description.
    """
    try:
        return _parse_response(response)
    except ClientError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise ClientError(f"malformed server response ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") \
            from None


def _parse_response(response) -> tuple:
    if not isinstance(response, dict):
        raise ClientError(f"malformed server response: a JSON {type(response).__name__}, expected an object")
    if "error" in response:
        raise ClientError(f"server error: {response['error']}")
    predictions = response.get("predictions")
    if not isinstance(predictions, (list, dict)):
        raise ClientError(f"malformed server response: 'predictions' is {type(predictions).__name__}, expected a list")
    if isinstance(predictions, dict):  # TF Serving's columnar format for single-output models
        predictions = [predictions]
    if not predictions:
        raise ClientError(f"response has no predictions (keys: {sorted(response)})")
    first = predictions[0]
    if not isinstance(first, dict) or "classes" not in first:
        raise ClientError("prediction has no 'classes' output (was the export's serving_default used?)")
    classes = np.asarray(first["classes"], dtype=np.int64)
    edge = np.asarray(first["edge"], dtype=np.float32) if "edge" in first else None
    if classes.ndim != 2:
        raise ClientError(f"'classes' has shape {classes.shape}, expected (H, W)")
    h, w = int(first.get("height", classes.shape[0])), int(first.get("width", classes.shape[1]))
    if not (0 < h <= classes.shape[0] and 0 < w <= classes.shape[1]):
        raise ClientError(f"malformed server response: height x width {h}x{w} does not fit 'classes' {classes.shape}")
    if edge is not None and edge.shape != classes.shape:
        raise ClientError(f"malformed server response: 'edge' {edge.shape} differs from 'classes' {classes.shape}")
    classes = classes[:h, :w]
    if edge is not None:
        edge = edge[:h, :w]
    return classes, edge


def colorize(classes: np.ndarray, colors=CITYSCAPES_COLORS) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ids without a colour are black."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = np.asarray(colors, np.uint8)
    return palette[np.clip(classes, 0, 255).astype(np.uint8)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Send an image to a TF Serving Gated-SCNN model (REST) and write the "
                                "colour mask.")
    p.add_argument("--server", default="http://localhost:8501", help="TF Serving REST address (default %(default)s)")
    p.add_argument("--model", default="gscnn", help="model name on the server (--model_name; default %(default)s)")
    p.add_argument("--version", type=int, default=None, help="model version (default: the server's latest)")
    p.add_argument("--signature", default="serving_default", help="signature name (default %(default)s)")
    p.add_argument("--image", required=True, help="PNG or JPEG file to segment")
    p.add_argument("--output", required=True, help="where to write the colour-coded class map (PNG)")
    p.add_argument("--edges", default=None, help="also write the edge map here (PNG, grey levels)")
    p.add_argument("--labels", default=None,
                   help="the export's assets/labels.json, to take class colours from it (default: Cityscapes)")
    p.add_argument("--timeout", type=float, default=60.0, help="request timeout in seconds (default %(default)s)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import cv2

    try:
        with open(args.image, "rb") as f:
            image_bytes = f.read()
    except OSError as exc:
        print(f"serving_client: error: {args.image}: cannot read ({exc.strerror or exc})", file=sys.stderr)
        return 2
    colors = CITYSCAPES_COLORS
    if args.labels:
        try:
            with open(args.labels, encoding="utf-8") as f:
                colors = [tuple(c) for c in json.load(f)["class_colors"]]
        except (OSError, ValueError, KeyError) as exc:
            print(f"serving_client: error: {args.labels}: no class_colors ({exc})", file=sys.stderr)
            return 2
    url = predict_url(args.server, args.model, args.version)
    try:
        classes, edge = parse_response(post_json(url, build_request(image_bytes, args.signature), args.timeout))
    except ClientError as exc:
        print(f"serving_client: error: {exc}", file=sys.stderr)
        return 1
    if not cv2.imwrite(args.output, cv2.cvtColor(colorize(classes, colors), cv2.COLOR_RGB2BGR)):
        print(f"serving_client: error: {args.output}: could not write PNG", file=sys.stderr)
        return 2
    if args.edges is not None and edge is not None:
        cv2.imwrite(args.edges, np.clip(np.round(edge * 255), 0, 255).astype(np.uint8))
    counts = np.bincount(classes.ravel().clip(0, 255), minlength=1)
    top = ", ".join(f"{c}:{n}" for c, n in sorted(enumerate(counts), key=lambda t: -t[1])[:3] if n)
    print(f"{args.output}: {classes.shape[1]}x{classes.shape[0]} class map (most frequent ids {top})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
