"""``mirage3d eval ...``: scoring stage outputs against a rendered collection's ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import OVERWRITE

eval_app = typer.Typer(help="Score outputs against ground truth (rendered collections only).", no_args_is_help=True)


@eval_app.command("poses")
@handle_errors
def poses(
    poses_dir: Path = typer.Argument(..., help="Poses folder written by `mirage3d poses discover`."),
    collection: Path = typer.Option(..., "--collection", help="The collection (with ground_truth.jsonl) the poses were discovered on."),
    output: Path = typer.Option(None, "-o", "--output", help="Write the metrics as JSON here (default POSES/eval.json)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """ARI / NMI of pose labels vs azimuth bins, and the median azimuth error after the best rotation/reflection."""
    from mirage3d.io import atomic_write_json, claim_output
    from mirage3d.poses.evaluate import evaluate_poses

    out = output or poses_dir / "eval.json"
    with claim_output(out, overwrite, kind="file"):
        m = evaluate_poses(poses_dir, collection)
        atomic_write_json(out, m.to_json())
    console.print(
        f"{m.num_images} images, K = {m.num_poses}: ARI {m.ari:.3f}, NMI {m.nmi:.3f}, median azimuth error {m.median_error_deg:.1f} deg "
        f"(mean {m.mean_error_deg:.1f}, {100 * m.within_45_deg:.0f}% within 45 deg; rotation {m.rotation_deg:.1f}, reflected {m.reflected})"
    )
    console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
