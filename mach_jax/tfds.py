"""``python -m mach_jax.tfds NAME --manual-dir DIR``: build a registry dataset for TFDS.

Reads DIR/train.txt and DIR/test.txt (or DIR/NAME/..., as ``python -m mach_jax.datasets
download NAME --dir DIR`` writes them) and writes ``extreme_classification/name`` as ArrayRecord
files under --data-dir; then ``tfds.data_source("extreme_classification/name", split=...)``
or `mach_jax.data.tfds.load_tfds` reads it. A dataset already built is left as it is.
"""

from __future__ import annotations

import argparse

from mach_jax import cli
from mach_jax.data.tfds import prepare


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mach_jax.tfds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="registry dataset (python -m mach_jax.datasets list)")
    parser.add_argument("--manual-dir", required=True,
                        help="folder with train.txt and test.txt, or with NAME/ holding them")
    parser.add_argument("--data-dir", help="TFDS data folder (default: $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    print(prepare(args.name, args.manual_dir, args.data_dir))  # errors: one line via cli.run_cli
    return 0


if __name__ == "__main__":
    cli.run_cli(main)
