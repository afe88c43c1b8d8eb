"""How every `sgm-jax` command that reads samples reads them: one set of options, one loader, any format
`sgm_jax.data.readers.read_dataset` knows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sgm_jax.choices import FORMATS

if TYPE_CHECKING:
    from sgm_jax.data.samples import Sample


def add_data_options(p, help: str, *, flag: str = "--data", required: bool = True, repeat: bool = False) -> None:
    """The samples file (`flag`, repeatable with `repeat`) and how it is read: --format, --split, --skip-missing,
    --allow-outside-images; `read_samples` reads them."""
    p.add_argument(flag, required=required, action="append" if repeat else "store", help=f"{help} (see --format)")
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        help="the format of the samples: native JSONL, an MM-SafetyBench root, an SGM release sheet, a JailBreakV "
        "CSV or a multiple-choice file (default: told from the file)",
    )
    p.add_argument("--split", help="only the samples of this split (default: all)")
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip (and count) samples whose image file is missing instead of stopping",
    )
    p.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="let image paths (absolute, '../' or symbolic links) lead outside the dataset's folder; by "
        "default such a path is refused",
    )


def image_options(args) -> dict[str, bool]:
    """What --skip-missing and --allow-outside-images ask of a reader."""
    return {"skip_missing_images": args.skip_missing, "allow_outside_images": args.allow_outside_images}


def read_samples(args, dest: str = "data") -> list[Sample]:
    """The samples of the file (or each file) in `args.<dest>`, read as `add_data_options`' options say; every file
    is checked whole before any work starts."""
    from sgm_jax.data.readers.dispatch import read_dataset

    paths = getattr(args, dest)
    samples = []
    for path in [paths] if isinstance(paths, str) else paths:
        samples += read_dataset(path, args.format, split=args.split, **image_options(args))
    return samples
