"""``svdh export``, ``svdh predict`` and ``svdh explain``: model bundles and scoring new images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from svdh.cli.keys import TRUST_OPTION, trusted_bundle

if TYPE_CHECKING:
    from svdh.inference.prediction import Prediction


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _fmt(v: object, nd: int = 1) -> str:
    return "-" if v is None else f"{float(v):.{nd}f}"  # type: ignore[arg-type]


def export(
    source: Path = typer.Argument(
        ..., help="A run directory (svdh train) or an ensemble directory (svdh ensemble)."
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Bundle file to write, e.g. model.svdh."),
    onnx: bool = typer.Option(
        False,
        "--onnx",
        help="Also write an ONNX graph of every member beside the bundle "
        "(same name, .onnx), checked against torch (max abs diff <= 1e-3).",
    ),
    sign: Path | None = typer.Option(
        None,
        "--sign",
        help="Sign the bundle with this private key (svdh keygen): who scores with it can "
        "then check it is yours and unchanged (--trust KEY.pub).",
    ),
) -> None:
    """Pack a run or an ensemble into one portable model file (.svdh).

    The bundle holds every fold model's weights (safetensors, never pickle), the architectures, the preprocessing, task and class bins, the meta-learner, the conformal interval quantiles and a model card (training data, metrics, versions, date), with a SHA-256 checksum. Score images with `svdh predict --model FILE`.
    """
    from svdh.inference.bundle import export_bundle, load_bundle

    path = export_bundle(source, out, onnx=onnx, sign_key=sign)
    b = load_bundle(path)
    if sign:
        from svdh.inference.signing import key_id, load_private_key

        typer.echo(f"signed with key {key_id(load_private_key(sign).public_key())}")
    else:
        typer.echo("unsigned (add --sign KEY to let users check its origin and integrity)")
    size = path.stat().st_size / 2**20
    members = ", ".join(
        f"{m['name']} ({m['arch'].get('backbone')}, {m['arch'].get('task')}, "
        f"{m['n_models']} fold models)"
        for m in b.members
    )
    typer.echo(f"wrote {path} ({size:.1f} MB, sha256 {b.sha256[:12]}): {members}")
    if onnx:
        typer.echo(
            f"wrote {path.with_suffix('.onnx')} (score with `svdh predict --model {path} --onnx ...`)"
        )
    typer.echo(f"next: svdh predict --model {path} IMAGES... -o predictions.csv")


PATIENTS_OPTION = typer.Option(
    None,
    "--patients",
    help="CSV with columns image,patient_id[,side][,visit][,sex] to sum both hands of a "
    "patient (per visit) and, with two or more visits, write the change table "
    "(out_changes.csv); sex (M/F or male) for bone age.",
)
SEX_OPTION = typer.Option(
    None, "--sex", help="Bone age: M or F for every image (else --patients, DICOM PatientSex)."
)
CAM_METHOD_OPTION = typer.Option(
    None,
    "--cam-method",
    help="Heat-map method (default gradcam+x-next): a pytorch-grad-cam method (gradcam, "
    "hirescam, gradcam++, layercam...) and options joined by '+' (x-next, mean-next, fine, "
    "aug); docs/benchmarks.md compares them.",
)


def predict(
    inputs: list[str] = typer.Argument(
        ...,
        help="Image files, folders (searched recursively) or glob patterns: "
        "PNG, JPEG, BMP, TIFF, DICOM.",
    ),
    model: Path = typer.Option(
        ..., "--model", "-m", help="Model bundle (.svdh) from `svdh export`."
    ),
    out: Path | None = typer.Option(
        None,
        "-o",
        "--out",
        help="Write results to out.csv (plus out_patients.csv) "
        "or out.json. Without it, one line per image is printed.",
    ),
    cam: Path | None = typer.Option(
        None,
        "--cam",
        help="Write Grad-CAM heat maps here: overlay PNG, a panel "
        "with every member, and the raw maps (.npy).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    patients: Path | None = PATIENTS_OPTION,
    sex: str | None = SEX_OPTION,
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    use_onnx: bool = typer.Option(
        False, "--onnx", help="Run the bundle's ONNX graph with onnxruntime instead of torch."
    ),
    target_layer: str | None = typer.Option(
        None,
        "--target-layer",
        help="Grad-CAM layer (module path, e.g. backbone.layer3) instead of the default "
        "method's two: the layer with >= 12 x 12 cells times the next deeper one.",
    ),
    cam_head: str = typer.Option("score", "--cam-head", help="Grad-CAM target: score or class."),
    cam_method: str | None = CAM_METHOD_OPTION,
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Threads that read and preprocess images ahead "
        "(default: 0 on a CPU, whose cores the models use; up to 4 with a GPU).",
    ),
    trust: list[Path] = TRUST_OPTION,
) -> None:
    """Score hand radiographs with a model bundle.

    Per image: the SvdH score, erosion and JSN where the model has them, the 90% interval, the severity class (with probabilities for class models), the spread between members and quality warnings. Where patient ids are known (DICOM PatientID, --patients CSV, or <patient>-LH/-RH file names) it also gives each patient's hands-and-wrists total. A bone-age bundle answers in months instead, with the sex it was given (--sex, the patients CSV or DICOM PatientSex). Files that cannot be read get an error row; the exit code is 1 when any failed.
    """
    from svdh.core.errors import BadConfigError
    from svdh.inference.inputs import expand_inputs, read_patients_csv
    from svdh.inference.predictor import Predictor

    if cam_head not in ("score", "class"):
        raise BadConfigError(f"--cam-head must be score or class, got {cam_head!r}")
    if use_onnx and cam is not None:
        raise BadConfigError(
            "--cam needs gradients, which the ONNX graph lacks; drop --onnx to write heat maps"
        )
    paths = expand_inputs(inputs)
    if not paths:
        raise BadConfigError(f"no image files found in {' '.join(inputs)}")
    pmap = read_patients_csv(patients) if patients else None
    predictor = Predictor(
        trusted_bundle(model, trust),
        device=device,
        backend="onnx" if use_onnx else "torch",
        batch_size=batch_size,
        target_layer=target_layer,
        cam_head=cam_head,
        cam_method=cam_method,
        workers=workers,
        sex=sex,
    )
    summary = _score_with_progress(predictor, paths, out, cam, pmap, lines=out is None)
    _report(summary, cam, lines=out is None)


def explain(
    cohort: Path = typer.Argument(
        ...,
        help="A phantom cohort from `svdh synth` (images and "
        "landmarks.json with every joint's position and scores).",
    ),
    model: Path = typer.Option(..., "--model", "-m", help="Model bundle (.svdh)."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Where to write localisation.json and cam_gallery/; give the "
        "run or ensemble directory so `svdh evaluate` and `svdh report` show them.",
    ),
    landmarks: Path | None = typer.Option(
        None, "--landmarks", help="landmarks.json (default: COHORT/landmarks.json)."
    ),
    radius: float = typer.Option(
        0.06,
        "--radius",
        help="Disc radius around each damaged joint, as a fraction "
        "of the hand size (diagonal of its landmarks' bounding box).",
    ),
    gallery: int = typer.Option(
        12, "--gallery", help="Overlays to write to cam_gallery/ (most damaged hands)."
    ),
    max_images: int | None = typer.Option(
        None, "--max-images", help="Use only the first N images."
    ),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
    target_layer: str | None = typer.Option(
        None, "--target-layer", help="Grad-CAM layer override."
    ),
    cam_head: str = typer.Option("score", "--cam-head", help="score or class."),
    cam_method: str | None = CAM_METHOD_OPTION,
) -> None:
    """Measure where Grad-CAM heat maps fall on a phantom cohort with known joint damage.

    For every hand with at least one damaged joint: the share of heat-map mass within a disc around the damaged joints, and whether the map's peak lies on one (pointing game), against random maps.
    """
    from svdh.core.errors import BadConfigError
    from svdh.inference.localisation import explain_cohort
    from svdh.inference.predictor import Predictor

    if cam_head not in ("score", "class"):
        raise BadConfigError(f"--cam-head must be score or class, got {cam_head!r}")
    predictor = Predictor(
        model,
        device=device,
        batch_size=batch_size,
        target_layer=target_layer,
        cam_head=cam_head,
        cam_method=cam_method,
    )
    s = explain_cohort(
        predictor,
        cohort,
        out,
        landmarks=landmarks,
        radius_frac=radius,
        gallery=gallery,
        max_images=max_images,
    )

    _print_localisation(s, out)


def _score_with_progress(
    predictor: Any, paths: list[Path], out: Path | None, cam: Path | None, pmap: Any, lines: bool
) -> dict[str, Any]:
    """:func:`svdh.inference.writers.predict_files` with a progress bar on a terminal's stderr
    and, with ``lines``, one line per image on stdout."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from svdh.inference.writers import predict_files

    err = _stderr_console()
    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("scoring", total=len(paths))

        def on_row(pred: Prediction) -> None:
            bar.advance(task)
            if lines:
                typer.echo(pred.to_text())
                sys.stdout.flush()

        return predict_files(predictor, paths, out=out, cam_dir=cam, patients=pmap, on_row=on_row)


def _change_line(c: dict[str, Any]) -> str:
    iv = "" if c["change_lo"] is None else f" [{_fmt(c['change_lo'])}, {_fmt(c['change_hi'])}]"
    p = "" if c["p_progression"] is None else f", P(progression) {c['p_progression']:.2f}"
    call = "progression" if c["progression"] else "no progression"
    return (
        f"patient {c['patient_id']}: change {c['visit_from']} -> {c['visit_to']} "
        f"{_fmt(c['change'])}{iv} (0-280): {call}{p}"
    )


def _report(summary: dict[str, Any], cam: Path | None, lines: bool) -> None:
    """Patient totals (with ``lines``) and the one-line summary; exit 1 when any image failed."""
    if lines:
        for p in summary["patients"]:
            if p["total"] is not None:
                iv = p["interval"] or [None, None]
                typer.echo(
                    f"patient {p['patient_id']}: hands-and-wrists total {_fmt(p['total'])} "
                    f"[{_fmt(iv[0])}, {_fmt(iv[1])}] class {p['severity_class']} ({p['severity_label']})"
                    + (f" at visit {p['visit']}" if p.get("visit") else "")
                )
        for c in summary.get("changes", []):
            typer.echo(_change_line(c))
    n, failed, warned = summary["n_images"], summary["n_failed"], summary["n_warned"]
    msg = f"scored {n - failed} of {n} images ({failed} failed, {warned} with warnings)"
    if summary["n_patients_with_total"]:
        msg += f"; {summary['n_patients_with_total']} patient totals"
    if summary.get("n_patient_changes"):
        msg += f"; {summary['n_patient_changes']} changes between visits"
    if summary["outputs"]:
        msg += "; wrote " + ", ".join(summary["outputs"])
    if cam is not None:
        msg += f"; heat maps in {cam}"
    typer.secho(msg, err=True, fg=typer.colors.RED if failed else None)
    if failed:
        raise typer.Exit(1)


def _print_localisation(s: dict[str, Any], out: Path) -> None:
    def pct(v: object) -> str:
        return "-" if v is None else f"{100 * float(v):.1f}%"  # type: ignore[arg-type]

    typer.echo(
        f"{s['n_images']} damaged hands ({s['n_images_without_damage']} without damage left out)"
    )
    typer.echo(
        f"heat-map mass on damaged joints: {pct(s['mass_on_damaged'])} "
        f"(random map {pct(s['random_mass'])}, random within the hand {pct(s['random_hand_mass'])})"
    )
    typer.echo(
        f"pointing game: {pct(s['pointing_game'])} "
        f"(random map {pct(s['random_pointing'])}, random within the hand {pct(s['random_hand_pointing'])})"
    )
    from svdh.runs.layout import RunDir

    typer.echo(f"wrote {RunDir(out).localisation} and {RunDir(out).cam_gallery}/")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("predict")(predict)
    app.command("explain")(explain)
