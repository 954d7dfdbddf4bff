"""``sparsecodes import FORMAT PATH --out BUNDLE_DIR [--name NAME] [--data ROWS] [--force]``."""

from __future__ import annotations

import argparse

from sparsecodes.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sparsecodes.export.sources import FORMATS

    parser.add_argument("format", metavar="FORMAT", choices=FORMATS, help=f"the saving library: {', '.join(FORMATS)}")
    parser.add_argument("path", metavar="PATH", help="the SAE's folder (config and weights as the library saved them)")
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="the bundle folder to create")
    parser.add_argument("--name", help="model name the service serves it under (default: the SAE folder's name)")
    parser.add_argument(
        "--data",
        metavar="ROWS",
        help="[N, d_in] rows in the SAE's input units (.npy/.npz/.safetensors): dead latents are measured on "
        "them and parity checked on them (default: rows drawn from the SAE's decoder; only provably dead "
        "latents are dropped)",
    )
    parser.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default 18)")
    parser.add_argument("--force", action="store_true", help="replace BUNDLE_DIR if it exists")
    parser.add_argument("--no-prune", dest="prune", action="store_false", help="serve every latent")
    parser.add_argument(
        "--no-source-check",
        dest="check_source",
        action="store_false",
        help="do not compare with the source library (when it is not installed); the manifest records null",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the bundle's path")


def run(args: argparse.Namespace) -> int:
    from sparsecodes.errors import BundleError
    from sparsecodes.export.importing import import_sae
    from sparsecodes.export.onnx import ExportError
    from sparsecodes.export.sources import SourceError

    try:
        manifest = import_sae(
            args.format,
            args.path,
            args.out,
            name=args.name,
            data=args.data,
            opset=args.opset,
            force=args.force,
            quiet=args.quiet,
            prune=args.prune,
            check_source=args.check_source,
        )
    except (SourceError, ExportError, BundleError) as e:
        raise CommandError(str(e)) from None
    if args.quiet:
        print(args.out)
        return 0
    src, p = manifest.source, manifest.parity["fp32"]
    print(
        f"bundle {args.out}: {manifest.name} {manifest.version} ({manifest.kind} from {src.format} "
        f"{src.architecture}, d_in {manifest.d_in}, d_served {manifest.d_served} of d_sae {manifest.d_sae})"
    )
    print(f"  parity with PyTorch: max rel {p.max_rel_error:.2e}; ties {p.index_mismatch_rows}/{p.rows_checked}")
    if src.parity is not None:
        print(
            f"  parity with {src.library}: max rel {src.parity.max_rel_error:.2e} (tolerance "
            f"{src.parity.tolerance:g}); ties {src.parity.index_mismatch_rows}/{src.parity.rows_checked}"
        )
    return 0
