"""Hydra composition of params/ into the typed schema, and one-line errors for bad input."""

import pytest

from hqtd.cli import main
from hqtd.config import Backbone, Config, Stage, from_yaml, load_config, to_yaml
from hqtd.errors import HqtdError


def test_default_composition_is_typed():
    config = load_config(["run_dir=runs/x"])
    assert isinstance(config, Config)
    assert config.benchmark.name == "mini_gta5"
    assert config.model.backbone is Backbone.mini
    assert config.model.num_classes == config.benchmark.num_classes == 19
    assert config.benchmark.source.root == "data/prepared/mini_gta5"


@pytest.mark.parametrize(
    ("benchmark", "classes", "lambda_cl"), [("gta5", 19, 0.01), ("synthia", 16, 0.008)]
)
def test_paper_benchmarks_pick_r101_and_their_weights(benchmark, classes, lambda_cl):
    config = load_config([f"benchmark={benchmark}", "run_dir=r", "data_root=/data"])
    assert config.model.backbone is Backbone.resnet101
    assert config.model.num_classes == classes
    assert config.method.lambda_cl == lambda_cl
    assert config.benchmark.target_val.root == "/data/prepared/cityscapes"
    assert tuple(config.benchmark.source_size) == (1280, 720)


@pytest.mark.parametrize(
    ("method", "switches"),
    [
        ("source_only", dict(stage=Stage.source_only, self_training=False)),
        ("baseline", dict(stage=Stage.adapt, self_training=True, t2s=False, pixel=False)),
        ("t2s", dict(t2s=True, pixel=False, proto=False)),
        ("pixel", dict(t2s=False, pixel=True, proto=False)),
        ("proto", dict(t2s=False, pixel=False, proto=True)),
        ("full", dict(t2s=True, pixel=True, proto=True, edge=False, quirk_t2s_first_image=False)),
        ("full_edge", dict(t2s=True, pixel=True, proto=True, edge=True)),
        (
            "official",
            dict(
                quirk_classmix_offset=True, quirk_t2s_first_image=True, quirk_proto_first_image=True
            ),
        ),
        ("official_edge", dict(edge=True, quirk_edge_code=True, quirk_classmix_offset=True)),
    ],
)
def test_method_variants(method, switches):
    config = load_config([f"method={method}", "run_dir=r"])
    assert config.method.name == method
    for key, value in switches.items():
        assert getattr(config.method, key) == value, key
    assert config.model.aspp_branches == (2 if method.startswith("official") else 4)


def test_cli_override_beats_benchmark_file():
    config = load_config(["benchmark=mini_synthia", "model.backbone=resnet101", "run_dir=r"])
    assert config.model.backbone is Backbone.resnet101
    assert config.model.num_classes == 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["run_dir=r", "foo=1"], "Key 'foo' not in 'Config'"),
        (["run_dir=r", "train.iterations=abc"], "train.iterations=abc"),
        (["run_dir=r", "method=nope"], "available: baseline"),
        ([], "run_dir"),
    ],
)
def test_bad_configuration_is_one_clear_error(overrides, message):
    with pytest.raises(HqtdError, match=message) as info:
        load_config(overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.eval_every=0", "greater than 0"),
        ("train.checkpoint_every=0", "greater than 0"),
        ("train.batch_size=0", "greater than 0"),
        ("train.source_only_iterations=-5", "greater than 0"),
        ("train.source_only_iterations=0", "greater than 0"),
        ("train.iterations=0", "greater than 0"),
        ("train.num_workers=-1", "0 or more"),
        ("train.diagnostics=-1", "0 or more"),
        ("train.lr=-0.01", "greater than 0"),
        ("seed=-1", "0 or more"),
        ("benchmark.crop_size=0", "greater than 0"),
        ("benchmark.crop_size=-8", "greater than 0"),
        ("benchmark.target_size=[192,0]", "greater than 0"),
        ("model.num_classes=16", "mini_gta5 has 19 classes"),
        ("benchmark.crop_size=97", "larger than the smallest training image side (96 px"),
    ],
)
def test_out_of_range_values_fail_in_one_line_before_anything_is_written(
    override, expected, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    assert main(["train", f"run_dir={run_dir}", override]) == 2
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert err.count("\n") == 1 and "Traceback" not in err
    assert key in err and expected in err, err
    assert not run_dir.exists()  # no config.yaml left behind


def test_run_dir_with_a_space_composes(tmp_path):
    run_dir = tmp_path / "my runs" / "a"
    assert load_config([f"run_dir={run_dir}"]).run_dir == str(run_dir)
    assert load_config([f"run_dir='{run_dir}'"]).run_dir == str(run_dir)  # already quoted


def test_resize_of_zero_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "gta5", "--root", str(tmp_path), "--out", str(out), "--resize", "0x0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    assert "argument --resize: expected a positive WIDTHxHEIGHT, got '0x0'" in err


def test_command_line_mistakes_are_one_line(tmp_path, capsys):
    for argv, expected in [
        (
            ["prepare", "gta5", "--root", str(tmp_path)],
            "the following arguments are required: --out",
        ),
        (["prepare", "gta6"], "argument dataset: invalid choice: 'gta6'"),
        (["trian"], "invalid choice: 'trian'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "--help)" in err, err


def test_yaml_round_trip(tmp_path):
    config = load_config(["benchmark=synthia", "method=official", "seed=3", "run_dir=r"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    assert from_yaml(path) == config


def test_from_yaml_rejects_unknown_keys(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("run_dir: r\nbogus: 1\n")
    with pytest.raises(HqtdError, match="config.yaml"):
        from_yaml(path)


def test_cli_bad_override_exits_2_with_one_line(capsys):
    assert main(["train", "run_dir=r", "train.lr=fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqtd train: error: bad configuration")
    assert "train.lr" in err and "\n" not in err


def test_cli_help_lists_the_command_contract(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("synth", "prepare", "train", "evaluate", "tables", "compare"):
        assert command in out
