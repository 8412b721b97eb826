"""Whole studies from one YAML file: ``svdh run EXPERIMENT.yaml`` and ``svdh demo``.

An experiment file declares the data (sources, or phantom cohorts to generate), the
bone-age pretraining, the ensemble members (backbone, initialisation, scheme, task), the
ensemble, the export, the Grad-CAM measurement and the report. It is validated as a whole
before anything trains (pydantic, so every mistake is named by its path in the file).

Every step writes into its own folder under the experiment's output directory and is
skipped when its outputs already exist, so re-running after a crash continues where the
crash happened; the training steps themselves resume from their last checkpoint.

```
OUT/
  experiment.yaml        the resolved experiment (after profile and --out)
  data/<name>/           generated phantom cohorts
  pretrain/<backbone>/   bone-age runs (one per backbone that a member initialises from)
  members/<name>/        one training run per ensemble member
  ensemble/              the stacked (or averaged) ensemble, a run directory
  model.svdh             the model bundle
  report.html            the self-contained report
```
"""

from __future__ import annotations

import copy
import time
import typing
from collections.abc import Callable
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from svdh.core.errors import BadConfigError
from svdh.core.files import write_yaml
from svdh.runs.layout import RunDir, StudyDir

#: The experiments shipped with the package (``configs/`` at the repository root links here).
CONFIG_DIR = Path(__file__).parent / "configs"

PRETRAIN_INIT = "pretrain"  # a member's ``init: pretrain`` = the bone-age run of its backbone


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthSpec(_Strict):
    """A phantom cohort to generate (``svdh synth``)."""

    mode: Literal["ra", "child"] = "ra"
    n: int = Field(100, ge=2)
    size: int = Field(256, ge=64)
    seed: int = 0
    severity: str = "cohort"
    workers: int = Field(2, ge=1)


class DataSpec(_Strict):
    """One data set: an existing source spec, or a phantom cohort to generate."""

    source: str | None = None
    synth: SynthSpec | None = None

    @model_validator(mode="after")
    def _one_of(self) -> DataSpec:
        if (self.source is None) == (self.synth is None):
            raise ValueError("give exactly one of 'source' (e.g. ra2-dream:DIR) or 'synth'")
        return self


class DataSection(_Strict):
    train: DataSpec
    pretrain: DataSpec | None = None
    explain: DataSpec | None = None  # a phantom cohort with landmarks.json for measured Grad-CAM


@cache
def train_settings_model() -> type[BaseModel]:
    """The schema of a block of training settings, derived from ``TrainConfig``: every field
    optional, with its type and help; unknown keys are refused with their path."""
    from svdh.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    spec: dict[str, Any] = {
        f.name: (hints[f.name] | None, Field(None, description=f.metadata.get("help")))
        for f in fields(TrainConfig)
    }
    return create_model("TrainSettings", __config__=ConfigDict(extra="forbid"), **spec)


def _check_settings(v: dict[str, Any]) -> dict[str, Any]:
    """A dict of training settings validated against :func:`train_settings_model`."""
    return train_settings_model().model_validate(v).model_dump(exclude_unset=True)


class PretrainSection(_Strict):
    """Bone-age pretraining; ``train`` holds TrainConfig overrides (task is boneage)."""

    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("train")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(v)


def _default(name: str) -> Any:
    """The default of TrainConfig field ``name`` (declared there once)."""
    from svdh.train.config import TrainConfig

    return next(f.default for f in fields(TrainConfig) if f.name == name)


class MemberSpec(_Strict):
    """One ensemble member: the settings that name it (its other training settings in
    ``train``, checked against the schema derived from TrainConfig)."""

    name: str
    backbone: str
    task: Literal["regression", "classification", "ordinal"] = _default("task")
    init: str = _default("init")  # or "pretrain": the bone-age run of its backbone
    scheme: str = _default("scheme")
    train: dict[str, Any] = Field(default_factory=dict)  # further TrainConfig overrides

    @field_validator("train")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(v)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ ") or v.startswith("."):
            raise ValueError(
                f"member name {v!r} must be a plain folder name (no slashes or spaces)"
            )
        return v


class EnsembleSection(_Strict):
    method: Literal["stacking", "mean", "weighted"] = "stacking"
    level: float = Field(0.9, gt=0.5, lt=1.0)


class ExplainSection(_Strict):
    max_images: int = Field(40, ge=1)
    gallery: int = Field(8, ge=0)


class Experiment(_Strict):
    """The whole study. See ``configs/demo.yaml`` and ``configs/bo2024.yaml``."""

    name: str = "experiment"
    description: str = ""
    out: str = "runs/experiment"
    data: DataSection
    defaults: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields for every run
    pretrain: PretrainSection | None = None
    members: list[MemberSpec] = Field(min_length=1)
    ensemble: EnsembleSection | None = EnsembleSection()
    export: bool = True
    explain: ExplainSection | None = ExplainSection()
    report: bool = True
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("defaults")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_settings(v)

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [m.name for m in self.members]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"member names must be unique; repeated: {', '.join(dup)}")
        if any(m.init == PRETRAIN_INIT for m in self.members) and (
            self.pretrain is None or self.data.pretrain is None
        ):
            raise ValueError(
                "a member has 'init: pretrain' but the file has no 'pretrain' section "
                "and 'data.pretrain' source"
            )
        if self.ensemble is not None and len(self.members) < 2:
            raise ValueError("an ensemble needs at least 2 members (or set 'ensemble: null')")
        if self.explain is not None and self.data.explain is None:
            raise ValueError("'explain' needs 'data.explain': a phantom cohort with landmarks.json")
        return self


# --------------------------------------------------------------------------- loading


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_validation(path: Path, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{where}: {e['msg']}")
    return f"{path}: " + "; ".join(parts)


def load_experiment(
    path: str | Path, profile: str | None = None, out: str | Path | None = None
) -> Experiment:
    """Read, apply ``profile`` and ``out``, and validate an experiment file, including every
    member's training settings, before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise BadConfigError(f"{path}: experiment file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BadConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise BadConfigError(
            f"{path}: expected a mapping of sections (data, members, ...) at the top"
        )
    if profile:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            raise BadConfigError(
                f"{path}: no profile {profile!r}; it has: {', '.join(profiles) or 'none'}"
            )
        raw = _merge(raw, profiles[profile])
    if out is not None:
        raw["out"] = str(out)
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as err:
        raise BadConfigError(_format_validation(path, err)) from None
    for cfg, where in _all_train_configs(exp):
        try:
            cfg.validate()
        except BadConfigError as exc:
            raise BadConfigError(f"{path}: {where}: {exc}") from None
    return exp


def _train_config(exp: Experiment, overrides: dict[str, Any], where: str):
    from svdh.train import TrainConfig

    d = _merge(exp.defaults, overrides)
    unknown = sorted(set(d) - {f.name for f in fields(TrainConfig)})
    if unknown:  # the schema refuses these already; kept for configs built in Python
        raise BadConfigError(f"{where}: unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig.from_dict(d)


def _all_train_configs(exp: Experiment):
    if exp.pretrain is not None:
        yield _pretrain_config(exp, "resnet18", "placeholder"), "pretrain"
    for m in exp.members:
        yield _member_config(exp, m, "placeholder", "checkpoint:placeholder"), f"members.{m.name}"


def _pretrain_config(exp: Experiment, backbone: str, source: str):
    assert exp.pretrain is not None
    over = _merge(exp.pretrain.train, {"task": "boneage", "backbone": backbone, "source": source})
    over.setdefault("test_fraction", 0.0)
    return _train_config(exp, over, "pretrain")


def _member_config(exp: Experiment, m: MemberSpec, source: str, pretrain_init: str):
    init = pretrain_init if m.init == PRETRAIN_INIT else m.init
    over = _merge(
        m.train,
        {
            "task": m.task,
            "backbone": m.backbone,
            "init": init,
            "scheme": m.scheme,
            "source": source,
        },
    )
    return _train_config(exp, over, f"members.{m.name}")


# --------------------------------------------------------------------------- running


class Study:
    """Carries out an :class:`Experiment` step by step into its :class:`StudyDir`, skipping
    finished steps."""

    def __init__(
        self,
        exp: Experiment,
        log: Callable[[str], None] = print,
        runtime: dict[str, Any] | None = None,
    ) -> None:
        self.exp = exp
        self.out = Path(exp.out)
        self.dir = StudyDir(self.out)
        self.log = log
        self.runtime = runtime or {}  # accelerator/devices/strategy... from the command line
        self.made: dict[str, Path] = {}

    # each step returns what it made and logs whether it ran or was skipped
    def _step(self, title: str, done: bool, fn: Callable[[], Any]) -> Any:
        if done:
            self.log(f"[skip] {title}: already done")
            return None
        self.log(f"[run ] {title}")
        t0 = time.perf_counter()
        result = fn()
        self.log(f"[done] {title} ({time.perf_counter() - t0:.0f} s)")
        return result

    def data_source(self, key: str) -> str | None:
        spec: DataSpec | None = getattr(self.exp.data, key)
        if spec is None:
            return None
        if spec.source is not None:
            return spec.source
        assert spec.synth is not None
        s = spec.synth
        folder = self.dir.data(key)
        marker = StudyDir.data_complete(folder)

        def make() -> None:
            from svdh.synth import generate_cohort

            generate_cohort(
                folder,
                n=s.n,
                mode=s.mode,
                size=s.size,
                seed=s.seed,
                severity=s.severity,
                workers=s.workers,
            )
            marker.write_text("ok\n")

        self._step(
            f"phantom cohort '{key}' ({s.n} {'patients' if s.mode == 'ra' else 'children'})",
            marker.exists(),
            make,
        )
        return f"{'ra2-dream' if s.mode == 'ra' else 'rsna-boneage'}:{folder}"

    def _train(self, cfg: Any, rd: RunDir, title: str) -> Path:
        from svdh.train import train_run

        for k, v in self.runtime.items():
            setattr(cfg, k, v)
        self._step(title, rd.is_trained, lambda: train_run(cfg, rd.path, resume=rd.is_started))
        return rd.path

    def _pretrain(self, pre_src: str | None) -> dict[str, Path]:
        exp, pretrained = self.exp, {}
        if exp.pretrain is not None and pre_src is not None:
            for backbone in dict.fromkeys(
                m.backbone for m in exp.members if m.init == PRETRAIN_INIT
            ):
                cfg = _pretrain_config(exp, backbone, pre_src)
                pretrained[backbone] = self._train(
                    cfg, self.dir.pretrain(backbone), f"bone-age pretraining of {backbone}"
                )
        return pretrained

    def _members(self, train_src: str | None, pretrained: dict[str, Path]) -> list[Path]:
        members = []
        for m in self.exp.members:
            init = f"checkpoint:{pretrained[m.backbone]}" if m.init == PRETRAIN_INIT else m.init
            cfg = _member_config(self.exp, m, train_src, init)
            members.append(
                self._train(
                    cfg,
                    self.dir.member(m.name),
                    f"member {m.name} ({m.backbone}, {m.task}, {m.init}, {m.scheme})",
                )
            )
        self.made["members"] = self.dir.members
        return members

    def _ensemble(self, members: list[Path]) -> Path:
        ens_cfg = self.exp.ensemble
        if ens_cfg is None:
            return members[0]
        ens = self.dir.ensemble

        def make_ensemble() -> None:
            from svdh.evaluate.ensemble import build_ensemble
            from svdh.runs.tables import read_run

            build_ensemble(members, ens.path, method=ens_cfg.method, alpha=1 - ens_cfg.level)
            note = (read_run(ens.path).metrics or {}).get("verdict")
            if note:
                self.log(f"       note: {note}")

        self._step(
            f"{ens_cfg.method} ensemble of {len(members)} members",
            ens.is_ensembled,
            make_ensemble,
        )
        return ens.path

    def _export(self, final: Path) -> Path:
        bundle = self.dir.bundle
        if self.exp.export:

            def make_bundle() -> None:
                from svdh.inference.bundle import export_bundle

                export_bundle(final, bundle)

            self._step("model bundle", bundle.exists(), make_bundle)
            self.made["bundle"] = bundle
        return bundle

    def _explain(self, final: Path, bundle: Path, explain_src: str | None) -> None:
        explain = self.exp.explain
        if explain is None or explain_src is None or not bundle.exists():
            return
        folder = Path(explain_src.split(":", 1)[1])

        def make_explain() -> None:
            from svdh.inference.bundle import load_bundle
            from svdh.inference.localisation import explain_cohort
            from svdh.inference.predictor import Predictor

            explain_cohort(
                Predictor(load_bundle(bundle)),
                folder,
                final,
                gallery=explain.gallery,
                max_images=explain.max_images,
            )

        self._step(
            "Grad-CAM and its measured localisation",
            RunDir(final).localisation.exists(),
            make_explain,
        )

    def _report(self, final: Path, members: list[Path]) -> None:
        if not self.exp.report:
            return
        report = self.dir.report

        def make_report() -> None:
            from svdh.evaluate.report.html import build_report

            runs = [final, *members] if final not in members else members
            build_report(runs, report, title=f"svdh: {self.exp.name}")

        self._step("HTML report", report.exists(), make_report)
        self.made["report"] = report

    def run(self) -> dict[str, Path]:
        exp = self.exp
        self.out.mkdir(parents=True, exist_ok=True)
        write_yaml(self.dir.experiment, exp.model_dump(exclude={"profiles"}))
        train_src = self.data_source("train")
        pre_src = self.data_source("pretrain")
        explain_src = self.data_source("explain") if exp.explain is not None else None
        members = self._members(train_src, self._pretrain(pre_src))
        final = self._ensemble(members)
        self.made["final"] = final
        bundle = self._export(final)
        self._explain(final, bundle, explain_src)
        self._report(final, members)
        return self.made
