"""gscnn_tf: Gated-SCNN (Takikawa et al., ICCV 2019) for TensorFlow 2 / Keras 3."""
from setuptools import find_packages, setup

setup(
    name="gscnn_tf",
    version="0.1.0",
    description="Gated-SCNN semantic segmentation in TensorFlow 2 / Keras 3: "
    "TFRecords, model.fit under tf.distribute, paper metrics, SavedModel export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["gscnn_tf", "gscnn_tf.*", "tfrecords_tools", "tfrecords_tools.*"]),
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "numpy>=1.26,<3",
        "opencv-python-headless>=4.9,<5",
        "tensorflow-datasets>=4.9,<5",
        "cityscapesscripts>=2.2,<3",
        "tensorflow-serving-api>=2.21,<2.22",
        "pyyaml>=6,<7",
        "tensorboard>=2.20",
        "tqdm>=4.60",
    ],
    extras_require={
        # jax: the cross-backend test runs the model and losses on Keras' JAX backend (CPU).
        # pytest-xdist: scripts/run_tests.sh runs the tests in one worker process per core.
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "scipy>=1.11", "scikit-image>=0.22",
                 "jax>=0.5", "ruff>=0.6"],
        # convert: PyTorch reads the official Gated-SCNN .pth checkpoint (import_official_checkpoint.py).
        "convert": ["torch>=2.6"],
        # litert / onnx: run exported .tflite / .onnx files (gscnn_tf.deploy, predict.py --model FILE);
        # tf2onnx is what Keras' ONNX export calls.
        "litert": ["ai-edge-litert>=2.0"],
        "onnx": ["onnxruntime>=1.20", "tf2onnx>=1.16", "onnx>=1.16"],
    },
    entry_points={
        "console_scripts": [
            "gscnn-convert=tfrecords_tools.convert_cityscapes:main",
            "gscnn-synthetic=tfrecords_tools.make_synthetic:main",
            "gscnn-train=gscnn_tf.cli.train:main",
            "gscnn-evaluate=gscnn_tf.cli.evaluate:main",
            "gscnn-export=gscnn_tf.cli.export:main",
            "gscnn-predict=gscnn_tf.cli.predict:main",
            "gscnn-import-official=gscnn_tf.cli.import_official:main",
        ]
    },
)
