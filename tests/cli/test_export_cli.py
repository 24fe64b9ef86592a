"""export_savedmodel.py: --set without --config applies on top of the run's config.yaml."""
import os

import pytest
from conftest import tiny_model_config, write_untrained_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory (config.yaml + checkpoints/best.weights.h5) of the tiny Gated-SCNN."""
    from gscnn_tf.config import ExperimentConfig

    return write_untrained_run(ExperimentConfig(model=tiny_model_config()), tmp_path_factory.mktemp("export") / "run")


def test_set_without_config_starts_from_the_runs_config(tiny_run, tmp_path, monkeypatch, capsys):
    """The --help example (`--set model.num_classes=19` with a run directory) loaded the package
    defaults (ResNet-101) plus the override, and the run's weights did not fit them."""
    from gscnn_tf.cli import export
    from gscnn_tf.export import saved_model

    seen = {}

    def fake_export(model, config, export_dir, **kwargs):
        seen.update(model=model, config=config)
        return os.path.join(export_dir, "1")

    monkeypatch.setattr(saved_model, "export_saved_model", fake_export)
    code = export.main(["--checkpoint", tiny_run, "--export-dir", str(tmp_path / "export"),
                        "--set", "model.num_classes=19", "--set", "model.canny_high=120"])
    assert code == 0, capsys.readouterr().err
    config = seen["config"]
    assert config.model.backbone == "mobilenetv2" and config.model.aspp_filters == tiny_model_config().aspp_filters
    assert config.model.canny_high == 120.0  # the override, on top of the run's values
    assert os.path.abspath(config.train.model_dir) == tiny_run


@pytest.mark.slow
def test_set_without_config_exports_a_working_savedmodel(tiny_run, tmp_path, capsys):
    """The same through the real export: the SavedModel records the run's config with the override."""
    import yaml

    from gscnn_tf.cli import export

    out = tmp_path / "export"
    code = export.main(["--checkpoint", tiny_run, "--export-dir", str(out), "--set", "model.canny_high=120",
                        "--no-warmup", "--chunk-pixels", "0", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == str(out / "1")
    with open(out / "1" / "assets" / "config.yaml") as f:
        exported = yaml.safe_load(f)
    assert exported["model"]["backbone"] == "mobilenetv2" and exported["model"]["canny_high"] == 120.0
