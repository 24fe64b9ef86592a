"""What ``import gscnn_tf`` gives a user: the model, and every Keras object registered for loading."""
import subprocess
import sys

import keras
import numpy as np
from conftest import tiny_model_config

from gscnn_tf.model import GatedSCNN

FRESH_LOAD = """
import sys
import numpy as np
import gscnn_tf  # the only project import: it must register everything load_model needs
import keras
model = keras.saving.load_model(sys.argv[1])
assert type(model).__name__ == "GatedSCNN", type(model)
image = np.load(sys.argv[2])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(image)["seg_logits"]))
"""


def test_load_model_works_after_import_gscnn_tf_alone(tmp_path):
    keras.utils.set_random_seed(0)
    model = GatedSCNN(tiny_model_config(num_classes=3, sync_batchnorm=False))
    model.compile()  # the loss and metrics are saved too, and must be found on load
    path, image, out = str(tmp_path / "m.keras"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    model.save(path)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 32, 48, 3)).astype("float32")
    np.save(image, pixels)
    proc = subprocess.run([sys.executable, "-c", FRESH_LOAD, path, image, out], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = keras.ops.convert_to_numpy(model(pixels)["seg_logits"])
    np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=1e-5)


def test_the_package_names_the_model():
    import gscnn_tf

    assert gscnn_tf.GatedSCNN is GatedSCNN and gscnn_tf.__all__ == ["GatedSCNN"]
