"""Names and values of the serving contract: signatures, their inputs, fill values, assets.

Kept apart from the serving graph so that clients of the contract (warmup requests,
prediction, tests) import names without importing the export machinery.
"""

DEFAULT_SIGNATURE = "serving_default"
IMAGE_TENSOR_SIGNATURE = "serving_image_tensor"
BYTES_INPUT = "image_bytes"
TENSOR_INPUT = "images"
CLASSES_FILL = 255  # `classes` value outside an image's own area in a mixed-size batch
LABELS_ASSET = "labels.json"
CONFIG_ASSET = "config.yaml"
PAD_MODES = ("edge", "mean")
