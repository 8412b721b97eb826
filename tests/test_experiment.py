"""Experiment files: validated as a whole before anything trains, profiles, skipping."""

from pathlib import Path

import pytest
import yaml

from svdh.core.errors import BadConfigError
from svdh.experiment import CONFIG_DIR, load_experiment

MINIMAL = {
    "name": "t",
    "data": {"train": {"source": "ra2-dream:/nowhere"}},
    "members": [
        {"name": "a", "backbone": "resnet18"},
        {"name": "b", "backbone": "mobilenet_v2", "task": "ordinal"},
    ],
    "explain": None,
}


def _write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return p


@pytest.mark.parametrize("name", ["demo.yaml", "bo2024.yaml"])
def test_shipped_experiments_validate(name):
    exp = load_experiment(CONFIG_DIR / name)
    assert len(exp.members) >= 2
    assert {m.backbone for m in exp.members} >= {"mobilenet_v2"}


def test_repository_configs_are_the_packaged_ones():
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("demo.yaml", "bo2024.yaml"):
        assert (root / name).read_text() == (CONFIG_DIR / name).read_text()


def test_quick_profile_overrides_deeply(tmp_path):
    full = load_experiment(CONFIG_DIR / "demo.yaml")
    quick = load_experiment(CONFIG_DIR / "demo.yaml", profile="quick", out=tmp_path)
    assert quick.out == str(tmp_path)
    assert quick.defaults["epochs"] < full.defaults["epochs"]
    assert quick.data.train.synth.n < full.data.train.synth.n
    assert quick.data.train.synth.seed == full.data.train.synth.seed  # untouched keys survive
    assert len(quick.members) == 2


@pytest.mark.parametrize(
    "patch,needle",
    [
        (
            {
                "members": [
                    {"name": "a", "backbone": "resnet18"},
                    {"name": "a", "backbone": "resnet18"},
                ]
            },
            "unique",
        ),
        (
            {
                "members": [
                    {"name": "a", "backbone": "resnet18", "task": "dance"},
                    {"name": "b", "backbone": "resnet18"},
                ]
            },
            "members.0.task",
        ),
        (
            {
                "members": [
                    {"name": "a", "backbone": "resnet18", "init": "pretrain"},
                    {"name": "b", "backbone": "resnet18"},
                ]
            },
            "pretrain",
        ),
        (
            {
                "members": [
                    {"name": "a", "backbone": "alexnet9000"},
                    {"name": "b", "backbone": "resnet18"},
                ]
            },
            "members.a",
        ),
        ({"defaults": {"epochz": 3}}, "epochz"),
        ({"data": {"train": {}}}, "exactly one of"),
        ({"bogus_section": 1}, "bogus_section"),
        ({"members": [{"name": "a", "backbone": "resnet18"}]}, "at least 2 members"),
    ],
)
def test_bad_experiments_are_refused_with_the_path_named(tmp_path, patch, needle):
    doc = {**MINIMAL, **patch}
    with pytest.raises(BadConfigError, match=needle):
        load_experiment(_write(tmp_path, doc))


def test_not_yaml_and_missing_profile(tmp_path):
    with pytest.raises(BadConfigError, match="not valid YAML"):
        load_experiment(_write(tmp_path, "data: [unclosed"))
    with pytest.raises(BadConfigError, match="no profile 'fast'"):
        load_experiment(_write(tmp_path, MINIMAL), profile="fast")
    with pytest.raises(BadConfigError, match="not found"):
        load_experiment(tmp_path / "absent.yaml")
